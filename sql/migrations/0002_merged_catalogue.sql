-- 0002_merged_catalogue.sql
-- Purpose: the catalogue becomes a merge of upstream records: identity evidence per upstream
--          tool, merged versions with their sources, explanations, and ids that keep resolving.
-- Created: 2026-11-22

-- What identifies an upstream tool across registries (computed when it is published).
create table tool_evidence (
    upstream_tool_id bigint not null
        constraint tool_evidence_upstream_tool_id_fkey
        references upstream_tools (id) on delete cascade,
    kind text not null constraint tool_evidence_kind_check check (kind in ('id', 'alias', 'sha256')),
    value text not null,
    constraint tool_evidence_pkey primary key (upstream_tool_id, kind, value)
);
create index tool_evidence_kind_value_idx on tool_evidence (kind, value);

-- Why each member belongs to its tool, and what the merge refused or could not reconcile.
alter table catalogue_members add column joined_by jsonb not null default '[]';
alter table catalogue_tools add column conflicts jsonb not null default '[]';
alter table catalogue_tools add column sort_key text collate "C";
update catalogue_tools set sort_key = id;
alter table catalogue_tools alter column sort_key set not null;
create unique index catalogue_tools_sort_key_idx on catalogue_tools (sort_key);

-- The versions a merged tool serves; each names the upstream version whose document and files
-- are served, and every upstream version with the same content (the served one first).
create table catalogue_versions (
    tool_id text not null
        constraint catalogue_versions_tool_id_fkey
        references catalogue_tools (id) on delete cascade on update cascade,
    key text not null,
    position integer not null,
    upstream_version_id bigint not null
        constraint catalogue_versions_upstream_version_id_fkey
        references upstream_versions (id) on delete cascade,
    source_ids bigint[] not null,
    conflict boolean not null default false,
    constraint catalogue_versions_pkey primary key (tool_id, key)
);

-- Every id that ever named a catalogue tool, with the upstream records that tool held: the id
-- keeps resolving to whichever tool holds one of them now (its primary's first), after members
-- join or leave.
create table catalogue_id_history (
    id text not null,
    upstream_tool_id bigint not null
        constraint catalogue_id_history_upstream_tool_id_fkey
        references upstream_tools (id) on delete cascade,
    was_primary boolean not null,
    first_published timestamptz not null default now(),
    constraint catalogue_id_history_pkey primary key (id, upstream_tool_id)
);
create index catalogue_id_history_upstream_tool_id_idx on catalogue_id_history (upstream_tool_id);

-- Upstream tools whose record or liveness changed since the last merge.
alter table upstream_tools add column merge_dirty boolean not null default true;
create index upstream_tools_merge_dirty_idx on upstream_tools (id) where merge_dirty;
create index upstream_tools_external_id_idx on upstream_tools (external_id);
create index catalogue_tools_primary_member_id_idx on catalogue_tools (primary_member_id);

-- Ids are no longer stored one by one: a tool answers to its own id, to the qualified id of each
-- member ("#upstream/<upstream>/<upstream id>"), to each member's plain upstream id (the
-- best-priority member's tool when several), and to every id it once had.
create function catalogue_resolve(requested text) returns text
language sql stable as $$
    select coalesce(
        (select c.id from catalogue_tools c where c.id = requested),
        (select m.tool_id
         from upstream_tools t
         join upstreams u on u.id = t.upstream_id
         join catalogue_members m on m.upstream_tool_id = t.id
         where left(requested, 10) = '#upstream/'
           and u.name = split_part(substr(requested, 11), '/', 1)
           and t.external_id = substr(requested, 12 + length(split_part(substr(requested, 11), '/', 1)))),
        (select m.tool_id
         from upstream_tools t
         join upstreams u on u.id = t.upstream_id
         join catalogue_members m on m.upstream_tool_id = t.id
         where t.external_id = requested
         order by u.priority, u.name
         limit 1),
        (select m.tool_id
         from catalogue_id_history h
         join catalogue_members m on m.upstream_tool_id = h.upstream_tool_id
         where h.id = requested
         order by h.was_primary desc, h.first_published, h.upstream_tool_id
         limit 1))
$$;
