-- 0013_touch_triggers_planned.sql
-- Purpose: the statement triggers of migration 0010 that compare an update's old and new rows
--          (upstream tools, versions and files) plan that join each time they fire. A
--          PL/pgSQL statement keeps the plan of its first run in the session; the first run is
--          often an update of no rows (a harvest confirming nothing), planned for transition
--          tables of one row each, as a nested loop — which the next update of 20,000 rows then
--          ran over every pair of rows (95 s of a 20,000-tool first harvest; quadratic). Run
--          through EXECUTE, the join is planned for the rows actually there. What the triggers
--          record is unchanged.
-- Created: 2026-12-01

create or replace function catalogue_touch_versions() returns trigger language plpgsql as $$
begin
    if tg_op in ('INSERT', 'DELETE') then
        insert into catalogue_touched (upstream_tool_id)
        select distinct upstream_tool_id from changed_rows;
    else
        execute $q$
            insert into catalogue_touched (upstream_tool_id)
            select distinct n.upstream_tool_id from new_rows n join old_rows o on o.id = n.id
            where (n.doc, n.position, n.key) is distinct from (o.doc, o.position, o.key)
        $q$;
    end if;
    return null;
end $$;

create or replace function catalogue_touch_files() returns trigger language plpgsql as $$
begin
    if tg_op in ('INSERT', 'DELETE') then
        insert into catalogue_touched (upstream_version_id)
        select distinct upstream_version_id from changed_rows;
    else
        execute $q$
            insert into catalogue_touched (upstream_version_id)
            select distinct n.upstream_version_id from new_rows n join old_rows o
                on (o.upstream_version_id, o.descriptor_type, o.path)
                 = (n.upstream_version_id, n.descriptor_type, n.path)
            where (n.sha256, n.file_type, n.url) is distinct from (o.sha256, o.file_type, o.url)
        $q$;
    end if;
    return null;
end $$;

create or replace function catalogue_touch_upstream_tools() returns trigger language plpgsql as $$
begin
    execute $q$
        insert into catalogue_touched (upstream_tool_id)
        select n.id from new_rows n join old_rows o on o.id = n.id
        where n.doc_hash is distinct from o.doc_hash
    $q$;
    return null;
end $$;
