-- 0012_merge_queue.sql
-- Purpose: the upstream tools the next merge must re-merge are queued by id in a table of
--          their own, instead of flagged on their rows: the merge then empties the queue
--          instead of rewriting every record it merged (a million rows, with their indexes,
--          after a first publish of a million records).
-- Created: 2026-12-01

-- Ids of upstream tools whose record or liveness changed since the last merge (or that a
-- change of the rules or of an upstream's priority names). No foreign key: an id whose tool
-- was deleted is harmless (the merge finds no record) and leaves at the next merge.
create table merge_queue (
    upstream_tool_id bigint not null constraint merge_queue_pkey primary key
);
insert into merge_queue (upstream_tool_id) select id from upstream_tools where merge_dirty;
drop index upstream_tools_merge_dirty_idx;
alter table upstream_tools drop column merge_dirty;
