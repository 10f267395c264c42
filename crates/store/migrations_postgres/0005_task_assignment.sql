-- The version at which each task's assignee was last set or cleared, so that
-- a saga can tell the assignment it started from from a later one, even one
-- to the same person (unassigned, then assigned again). NULL: the assignee
-- has not changed since the task was created (or since this column exists).
ALTER TABLE tasks ADD COLUMN assigned_version BIGINT;
