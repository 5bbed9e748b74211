-- 0008_catalogue_write.sql
-- Purpose: the merge writes catalogue rows (and the id history) without a foreign-key check
--          per row (it already guarantees what they checked: every member, version and primary
--          it writes exists, in the same transaction). What the foreign keys also did is kept, by triggers that
--          run only then: a deleted catalogue tool takes its members and versions with it, a
--          renamed one keeps them, and deleted upstream records leave no catalogue row behind.
-- Created: 2026-12-01

alter table catalogue_tools drop constraint catalogue_tools_primary_member_id_fkey;
alter table catalogue_members drop constraint catalogue_members_upstream_tool_id_fkey;
alter table catalogue_members drop constraint catalogue_members_tool_id_fkey;
alter table catalogue_versions drop constraint catalogue_versions_tool_id_fkey;
alter table catalogue_versions drop constraint catalogue_versions_upstream_version_id_fkey;
alter table catalogue_id_history drop constraint catalogue_id_history_upstream_tool_id_fkey;

create function catalogue_tools_deleted() returns trigger
language plpgsql as $$
begin
    delete from catalogue_members m using gone g where m.tool_id = g.id;
    delete from catalogue_versions v using gone g where v.tool_id = g.id;
    return null;
end
$$;
create trigger catalogue_tools_deleted after delete on catalogue_tools
    referencing old table as gone for each statement
    execute function catalogue_tools_deleted();

create function catalogue_tools_renamed() returns trigger
language plpgsql as $$
begin
    update catalogue_members set tool_id = new.id where tool_id = old.id;
    update catalogue_versions set tool_id = new.id where tool_id = old.id;
    return null;
end
$$;
create trigger catalogue_tools_renamed after update of id on catalogue_tools
    for each row when (old.id is distinct from new.id)
    execute function catalogue_tools_renamed();

create function upstream_tools_deleted() returns trigger
language plpgsql as $$
begin
    delete from catalogue_tools c using gone g where c.primary_member_id = g.id;
    delete from catalogue_members m using gone g where m.upstream_tool_id = g.id;
    delete from catalogue_id_history h using gone g where h.upstream_tool_id = g.id;
    return null;
end
$$;
create trigger upstream_tools_deleted after delete on upstream_tools
    referencing old table as gone for each statement
    execute function upstream_tools_deleted();

create function upstream_versions_deleted() returns trigger
language plpgsql as $$
begin
    delete from catalogue_versions v using gone g where v.upstream_version_id = g.id;
    return null;
end
$$;
create trigger upstream_versions_deleted after delete on upstream_versions
    referencing old table as gone for each statement
    execute function upstream_versions_deleted();
create index catalogue_versions_upstream_version_id_idx
    on catalogue_versions (upstream_version_id);
