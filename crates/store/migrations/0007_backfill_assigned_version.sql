-- Tasks assigned before 0006 have no `assigned_version`, and a NULL one lets
-- any saga of the same assignee speak for the task, even one from before an
-- unassignment and a new assignment to that person. Each assigned task gets
-- the version its assignment most likely dates from, read from its newest
-- saga (by the task version it started from, up to the task's current
-- one): that saga's version when it is the current assignee's; the task's
-- current version when it is someone else's (the current assignment came
-- after it) or there is none (a bound: the assignee was set at or before
-- it). Unassigned tasks keep NULL, which is what a task never assigned
-- still gets; tasks whose assignee changed after 0006 already have theirs.
UPDATE tasks
SET assigned_version = COALESCE(
        (SELECT CASE WHEN s.assignee = tasks.assignee THEN s.task_version
                     ELSE tasks.version END
         FROM sagas s
         WHERE s.task_id = tasks.id
           AND s.task_version <= tasks.version
         ORDER BY s.task_version DESC, s.created_at DESC
         LIMIT 1),
        tasks.version)
WHERE assigned_version IS NULL AND assignee IS NOT NULL;
