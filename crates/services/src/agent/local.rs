//! The default model: rules and keywords over a task's title and
//! description, deterministic and offline, so `taskstream up` needs no
//! network. The rules (also in README.md, "The triage agent"):
//!
//! - **Priority** `high` for any of the words *urgent, asap, blocker,
//!   blocking, critical, outage, emergency, immediately, p0, p1*; `low`
//!   for *someday, eventually, minor, whenever, backlog, trivial* or the
//!   phrases *nice to have, low priority*; no opinion otherwise. High wins.
//! - **Due date** at 17:00 UTC of: the creation day for *today, eod, end of
//!   day, tonight*; the next day for *tomorrow*; *in N days* / *within N
//!   days* (N up to 365) after it; the next Monday for *next week*; the
//!   coming Friday (the same day on a Friday) for *end of week, eow, this
//!   week*; the next such weekday (strictly after the creation day) for a
//!   weekday's name, as in *by friday*. The earliest phrase found wins.
//! - **Assignee** from a keyword map (`--agent-assignees
//!   database=ana,frontend=bo`): the first keyword, in the map's order,
//!   that appears as a word.
//! - **Confidence** 10 with no opinion, plus 30 per field suggested (40,
//!   70, 100).

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Duration, NaiveTime, Utc, Weekday};
use taskstream_domain::Priority;

use super::model::{ModelError, Triage, TriageInput, TriageModel};

const HIGH_WORDS: &[&str] = &[
    "urgent",
    "asap",
    "blocker",
    "blocking",
    "critical",
    "outage",
    "emergency",
    "immediately",
    "p0",
    "p1",
];
const LOW_WORDS: &[&str] = &[
    "someday",
    "eventually",
    "minor",
    "whenever",
    "backlog",
    "trivial",
];
const LOW_PHRASES: &[&str] = &["nice to have", "low priority"];

/// Which words name which assignee, in the order they are tried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssigneeMap(Vec<(String, String)>);

impl AssigneeMap {
    /// Parses `keyword=assignee,keyword=assignee`; keywords are single
    /// words (letters, digits, `-`, `_`), matched case-insensitively.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((keyword, assignee)) = item.split_once('=') else {
                return Err(format!("expected keyword=assignee, got {item:?}"));
            };
            let (keyword, assignee) = (keyword.trim().to_lowercase(), assignee.trim());
            if keyword.is_empty() || !keyword.chars().all(|c| c.is_alphanumeric()) {
                return Err(format!(
                    "a keyword is one word of letters and digits, got {keyword:?}"
                ));
            }
            if assignee.is_empty() || assignee.chars().count() > 100 {
                return Err(format!(
                    "an assignee has 1 to 100 characters, got {assignee:?}"
                ));
            }
            pairs.push((keyword, assignee.to_owned()));
        }
        Ok(Self(pairs))
    }

    fn assignee_for(&self, words: &[String]) -> Option<(&str, &str)> {
        self.0
            .iter()
            .find(|(keyword, _)| words.iter().any(|w| w == keyword))
            .map(|(k, a)| (k.as_str(), a.as_str()))
    }
}

/// The rules-and-keywords model (see the module's documentation).
#[derive(Debug, Clone, Default)]
pub struct LocalModel {
    assignees: AssigneeMap,
}

impl LocalModel {
    pub fn new(assignees: AssigneeMap) -> Self {
        Self { assignees }
    }

    /// The answer, computed; never fails.
    pub fn suggest(&self, input: &TriageInput) -> Triage {
        let text = match &input.description {
            Some(d) => format!("{} {}", input.title, d),
            None => input.title.clone(),
        };
        let words = words(&text);
        let joined = format!(" {} ", words.join(" "));
        let mut reasons = Vec::new();
        let priority = if let Some(w) = first_word(&words, HIGH_WORDS) {
            reasons.push(format!("priority high for \"{w}\""));
            Some(Priority::High)
        } else if let Some(w) = first_word(&words, LOW_WORDS).or_else(|| {
            LOW_PHRASES
                .iter()
                .copied()
                .find(|p| joined.contains(&format!(" {p} ")))
        }) {
            reasons.push(format!("priority low for \"{w}\""));
            Some(Priority::Low)
        } else {
            None
        };
        let due_at = due_date(&words, input.created_at).map(|(at, phrase)| {
            reasons.push(format!("due {} for \"{phrase}\"", at.format("%Y-%m-%d")));
            at
        });
        let assignee = self.assignees.assignee_for(&words).map(|(k, a)| {
            reasons.push(format!("assignee {a} for \"{k}\""));
            a.to_owned()
        });
        let found = [priority.is_some(), due_at.is_some(), assignee.is_some()]
            .iter()
            .filter(|f| **f)
            .count() as u8;
        Triage {
            priority,
            assignee,
            due_at,
            confidence: 10 + 30 * found,
            rationale: if reasons.is_empty() {
                "no keyword matched".to_owned()
            } else {
                reasons.join("; ")
            },
        }
    }
}

#[async_trait]
impl TriageModel for LocalModel {
    fn name(&self) -> &str {
        "local"
    }

    async fn triage(&self, input: &TriageInput) -> Result<Triage, ModelError> {
        Ok(self.suggest(input))
    }
}

/// Lower-case words of letters and digits.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn first_word<'a>(words: &[String], list: &[&'a str]) -> Option<&'a str> {
    words
        .iter()
        .find_map(|w| list.iter().copied().find(|l| l == w))
}

/// 17:00 UTC on `day`'s date.
fn end_of(day: DateTime<Utc>) -> DateTime<Utc> {
    day.date_naive()
        .and_time(NaiveTime::from_hms_opt(17, 0, 0).expect("a valid time"))
        .and_utc()
}

fn weekday(word: &str) -> Option<Weekday> {
    Some(match word {
        "monday" => Weekday::Mon,
        "tuesday" => Weekday::Tue,
        "wednesday" => Weekday::Wed,
        "thursday" => Weekday::Thu,
        "friday" => Weekday::Fri,
        "saturday" => Weekday::Sat,
        "sunday" => Weekday::Sun,
        _ => return None,
    })
}

/// Days from `from` to the next `day`, 1 to 7 (a week on the same weekday).
fn days_until(from: Weekday, day: Weekday) -> i64 {
    let ahead = (day.num_days_from_monday() as i64 - from.num_days_from_monday() as i64 + 7) % 7;
    if ahead == 0 {
        7
    } else {
        ahead
    }
}

/// The earliest due date a phrase in `words` names, and the phrase.
fn due_date(words: &[String], created: DateTime<Utc>) -> Option<(DateTime<Utc>, String)> {
    let today = created.weekday();
    let mut found: Vec<(i64, String)> = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).map(String::as_str);
        match w.as_str() {
            "today" | "eod" | "tonight" => found.push((0, w.clone())),
            "end" if next == Some("of") => match words.get(i + 2).map(String::as_str) {
                Some("day") => found.push((0, "end of day".into())),
                Some("week") => found.push((
                    (Weekday::Fri.num_days_from_monday() as i64
                        - today.num_days_from_monday() as i64)
                        .rem_euclid(7),
                    "end of week".into(),
                )),
                _ => {}
            },
            "eow" => found.push((
                (4 - today.num_days_from_monday() as i64).rem_euclid(7),
                "eow".into(),
            )),
            "this" if next == Some("week") => found.push((
                (4 - today.num_days_from_monday() as i64).rem_euclid(7),
                "this week".into(),
            )),
            "tomorrow" => found.push((1, w.clone())),
            "next" if next == Some("week") => {
                found.push((days_until(today, Weekday::Mon), "next week".into()))
            }
            "in" | "within" => {
                if let (Some(n), Some("days" | "day")) = (
                    next.and_then(|n| n.parse::<i64>().ok()),
                    words.get(i + 2).map(String::as_str),
                ) {
                    if (0..=365).contains(&n) {
                        found.push((n, format!("{w} {n} days")));
                    }
                }
            }
            other => {
                if let Some(day) = weekday(other) {
                    found.push((days_until(today, day), other.to_owned()));
                }
            }
        }
    }
    found
        .into_iter()
        .min_by_key(|(days, _)| *days)
        .map(|(days, phrase)| (end_of(created + Duration::days(days)), phrase))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wednesday 2026-12-02, 09:30 UTC.
    fn wednesday() -> DateTime<Utc> {
        "2026-12-02T09:30:00Z".parse().unwrap()
    }

    fn input(title: &str, description: Option<&str>) -> TriageInput {
        TriageInput {
            title: title.into(),
            description: description.map(Into::into),
            created_at: wednesday(),
        }
    }

    fn model() -> LocalModel {
        LocalModel::new(AssigneeMap::parse("database=ana, frontend=bo, db=ana").unwrap())
    }

    #[test]
    fn urgent_words_suggest_high_priority_and_calm_ones_low() {
        let m = model();
        for title in [
            "URGENT: fix login",
            "blocker for release",
            "do this asap!",
            "P1 outage",
        ] {
            assert_eq!(
                m.suggest(&input(title, None)).priority,
                Some(Priority::High),
                "{title}"
            );
        }
        for title in [
            "minor typo",
            "nice to have: dark mode",
            "someday, tidy docs",
        ] {
            assert_eq!(
                m.suggest(&input(title, None)).priority,
                Some(Priority::Low),
                "{title}"
            );
        }
        assert_eq!(m.suggest(&input("write the report", None)).priority, None);
        // Words only, not parts of words.
        assert_eq!(
            m.suggest(&input("the asapology draft", None)).priority,
            None
        );
        // High wins over low.
        assert_eq!(
            m.suggest(&input("minor but urgent", None)).priority,
            Some(Priority::High)
        );
    }

    #[test]
    fn due_phrases_count_from_the_creation_day_at_five_pm_utc() {
        let m = model();
        let due = |title: &str| {
            m.suggest(&input(title, None))
                .due_at
                .map(|d| d.to_rfc3339())
        };
        assert_eq!(due("ship it today").unwrap(), "2026-12-02T17:00:00+00:00");
        assert_eq!(due("review tomorrow").unwrap(), "2026-12-03T17:00:00+00:00");
        assert_eq!(
            due("report by Friday").unwrap(),
            "2026-12-04T17:00:00+00:00"
        );
        // The same weekday is next week's.
        assert_eq!(
            due("sync on wednesday").unwrap(),
            "2026-12-09T17:00:00+00:00"
        );
        assert_eq!(due("plan next week").unwrap(), "2026-12-07T17:00:00+00:00");
        assert_eq!(
            due("close it in 10 days").unwrap(),
            "2026-12-12T17:00:00+00:00"
        );
        assert_eq!(
            due("wrap up by end of week").unwrap(),
            "2026-12-04T17:00:00+00:00"
        );
        // The earliest phrase wins.
        assert_eq!(
            due("friday, or tomorrow if you can").unwrap(),
            "2026-12-03T17:00:00+00:00"
        );
        assert_eq!(due("no date here"), None);
        assert_eq!(due("in 9999 days"), None);
    }

    #[test]
    fn the_first_keyword_of_the_map_found_in_title_or_description_names_the_assignee() {
        let m = model();
        let triage = m.suggest(&input("Slow page", Some("the frontend and the database")));
        assert_eq!(triage.assignee.as_deref(), Some("ana"));
        let triage = m.suggest(&input("Frontend glitch", None));
        assert_eq!(triage.assignee.as_deref(), Some("bo"));
        assert_eq!(
            m.suggest(&input("databases in general", None)).assignee,
            None
        );
        assert_eq!(
            LocalModel::default()
                .suggest(&input("database", None))
                .assignee,
            None
        );
    }

    #[test]
    fn confidence_grows_with_each_field_suggested_and_the_rationale_names_the_words() {
        let m = model();
        assert_eq!(m.suggest(&input("write the report", None)).confidence, 10);
        assert_eq!(m.suggest(&input("urgent report", None)).confidence, 40);
        let all = m.suggest(&input("urgent: database down", Some("fix by tomorrow")));
        assert_eq!(all.confidence, 100);
        assert_eq!(
            all.rationale,
            "priority high for \"urgent\"; due 2026-12-03 for \"tomorrow\"; assignee ana for \"database\""
        );
    }

    #[test]
    fn the_same_input_gets_the_same_answer() {
        let m = model();
        let a = m.suggest(&input("urgent: database by friday", None));
        assert_eq!(a, m.suggest(&input("urgent: database by friday", None)));
    }

    #[test]
    fn an_assignee_map_refuses_what_it_cannot_use() {
        assert!(AssigneeMap::parse("").unwrap().0.is_empty());
        assert!(AssigneeMap::parse("database").is_err());
        assert!(AssigneeMap::parse("two words=ana").is_err());
        assert!(AssigneeMap::parse("db=").is_err());
        assert_eq!(
            AssigneeMap::parse("DB = Ana ").unwrap().0,
            [("db".to_owned(), "Ana".to_owned())]
        );
    }
}
