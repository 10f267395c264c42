-- Tasks assigned before 0006 have no `assigned_version`, and a NULL one lets
-- any saga of the same assignee speak for the task, even one from before an
-- unassignment and a new assignment to that person. Each assigned task gets
-- the version its assignment most likely dates from: the task version at
-- which the latest saga for its current assignee started, or, with no such
-- saga, the task's current version (a bound: the assignee was set at or
-- before it). Unassigned tasks keep NULL ("not changed since creation"),
-- which is what an unassigned task still gets when it is created; tasks
-- whose assignee changed after 0006 already have theirs.
UPDATE tasks
SET assigned_version = COALESCE(
        (SELECT MAX(s.task_version) FROM sagas s
         WHERE s.task_id = tasks.id::text
           AND s.assignee = tasks.assignee
           AND s.task_version <= tasks.version),
        tasks.version)
WHERE assigned_version IS NULL AND assignee IS NOT NULL;
