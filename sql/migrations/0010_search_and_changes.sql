-- 0010_search_and_changes.sql
-- Purpose: for indexers and other mirrors: a full-text search index of the merged catalogue, a
--          change feed of it (added, changed, removed, merged, split, id changed), and this
--          instance's stable identity (so that aggregators harvesting each other never
--          re-import their own records). Both the index and the feed are maintained inside the
--          publishing transaction by a trigger on the generation bump, from the catalogue rows
--          the publish touched: no code path that writes the catalogue needs to know of them.
-- Created: 2026-12-01

create extension if not exists pg_trgm;

-- This instance: the id its change feed announces. A copy of the database (CREATE DATABASE
-- ... TEMPLATE, a restore) is another instance: the id is made again when the database's oid
-- is not the one it was made in.
create table aggregator_instance (
    singleton boolean primary key default true constraint aggregator_instance_singleton_check
        check (singleton),
    id text not null,
    database_oid oid not null
);

create function aggregator_instance_id() returns text language plpgsql as $$
declare
    here oid := (select oid from pg_database where datname = current_database());
    found text;
begin
    select id into found from aggregator_instance where database_oid = here;
    if found is null then
        found := 'trs-aggregator:' || gen_random_uuid()::text;
        insert into aggregator_instance (id, database_oid) values (found, here)
        on conflict (singleton) do update set id = excluded.id, database_oid = excluded.database_oid;
    end if;
    return found;
end $$;

-- Where an upstream record really comes from when it was harvested from another aggregator:
-- {"upstream": <its name there>, "service_id": <the aggregator it came through>, "via": [...]}.
alter table upstream_tools add column origin jsonb;

-- Where the records an aggregator upstream is about to publish come from (written by its
-- harvest before publishing; copied onto upstream_tools.origin as the records are written).
create table aggregator_origins (
    upstream_id integer not null
        constraint aggregator_origins_upstream_id_fkey references upstreams (id) on delete cascade,
    external_id text not null,
    origin jsonb not null,
    constraint aggregator_origins_pkey primary key (upstream_id, external_id)
);

create function upstream_tools_set_origin() returns trigger language plpgsql as $$
begin
    select o.origin into new.origin from aggregator_origins o
    where o.upstream_id = new.upstream_id and o.external_id = new.external_id;
    return new;
end $$;

create trigger upstream_tools_origin before insert or update of doc, doc_hash on upstream_tools
    for each row execute function upstream_tools_set_origin();

-- How far each aggregator upstream's change feed was read, and which aggregator it is.
create table aggregator_cursors (
    upstream_id integer primary key
        constraint aggregator_cursors_upstream_id_fkey references upstreams (id) on delete cascade,
    remote_id text not null,
    cursor bigint not null,
    updated_at timestamptz not null default now()
);

-- What the running transaction touched, consumed by catalogue_capture() in the same
-- transaction.
create unlogged table catalogue_touched (
    tool_id text,
    upstream_tool_id bigint,
    upstream_version_id bigint
);

create function catalogue_touch_tools() returns trigger language plpgsql as $$
begin
    if tg_op in ('INSERT', 'UPDATE') then
        insert into catalogue_touched (tool_id) select distinct id from new_rows;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        insert into catalogue_touched (tool_id) select distinct id from old_rows;
    end if;
    return null;
end $$;

create function catalogue_touch_by_tool_id() returns trigger language plpgsql as $$
begin
    if tg_op in ('INSERT', 'UPDATE') then
        insert into catalogue_touched (tool_id) select distinct tool_id from new_rows;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        insert into catalogue_touched (tool_id) select distinct tool_id from old_rows;
    end if;
    return null;
end $$;

create function catalogue_touch_members() returns trigger language plpgsql as $$
begin
    if tg_op in ('INSERT', 'UPDATE') then
        insert into catalogue_touched (tool_id, upstream_tool_id)
        select tool_id, upstream_tool_id from new_rows;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        insert into catalogue_touched (tool_id, upstream_tool_id)
        select tool_id, upstream_tool_id from old_rows;
    end if;
    return null;
end $$;

create function catalogue_touch_versions() returns trigger language plpgsql as $$
begin
    if tg_op in ('INSERT', 'DELETE') then
        insert into catalogue_touched (upstream_tool_id)
        select distinct upstream_tool_id from changed_rows;
    else
        insert into catalogue_touched (upstream_tool_id)
        select distinct n.upstream_tool_id from new_rows n join old_rows o on o.id = n.id
        where (n.doc, n.position, n.key) is distinct from (o.doc, o.position, o.key);
    end if;
    return null;
end $$;

create function catalogue_touch_files() returns trigger language plpgsql as $$
begin
    if tg_op in ('INSERT', 'DELETE') then
        insert into catalogue_touched (upstream_version_id)
        select distinct upstream_version_id from changed_rows;
    else
        insert into catalogue_touched (upstream_version_id)
        select distinct n.upstream_version_id from new_rows n join old_rows o
            on (o.upstream_version_id, o.descriptor_type, o.path)
             = (n.upstream_version_id, n.descriptor_type, n.path)
        where (n.sha256, n.file_type, n.url) is distinct from (o.sha256, o.file_type, o.url);
    end if;
    return null;
end $$;

-- An upstream record whose document changed (the merge may leave its catalogue rows as they
-- were).
create function catalogue_touch_upstream_tools() returns trigger language plpgsql as $$
begin
    insert into catalogue_touched (upstream_tool_id)
    select n.id from new_rows n join old_rows o on o.id = n.id
    where n.doc_hash is distinct from o.doc_hash;
    return null;
end $$;

create trigger upstream_tools_touch_upd after update on upstream_tools
    referencing new table as new_rows old table as old_rows
    for each statement execute function catalogue_touch_upstream_tools();

create trigger catalogue_tools_touch_ins after insert on catalogue_tools
    referencing new table as new_rows for each statement execute function catalogue_touch_tools();
create trigger catalogue_tools_touch_upd after update on catalogue_tools
    referencing new table as new_rows old table as old_rows
    for each statement execute function catalogue_touch_tools();
create trigger catalogue_tools_touch_del after delete on catalogue_tools
    referencing old table as old_rows for each statement execute function catalogue_touch_tools();

create trigger catalogue_versions_touch_ins after insert on catalogue_versions
    referencing new table as new_rows
    for each statement execute function catalogue_touch_by_tool_id();
create trigger catalogue_versions_touch_upd after update on catalogue_versions
    referencing new table as new_rows old table as old_rows
    for each statement execute function catalogue_touch_by_tool_id();
create trigger catalogue_versions_touch_del after delete on catalogue_versions
    referencing old table as old_rows
    for each statement execute function catalogue_touch_by_tool_id();

create trigger catalogue_members_touch_ins after insert on catalogue_members
    referencing new table as new_rows for each statement execute function catalogue_touch_members();
create trigger catalogue_members_touch_upd after update on catalogue_members
    referencing new table as new_rows old table as old_rows
    for each statement execute function catalogue_touch_members();
create trigger catalogue_members_touch_del after delete on catalogue_members
    referencing old table as old_rows for each statement execute function catalogue_touch_members();

create trigger upstream_versions_touch_ins after insert on upstream_versions
    referencing new table as changed_rows
    for each statement execute function catalogue_touch_versions();
create trigger upstream_versions_touch_upd after update on upstream_versions
    referencing new table as new_rows old table as old_rows
    for each statement execute function catalogue_touch_versions();
create trigger upstream_versions_touch_del after delete on upstream_versions
    referencing old table as changed_rows
    for each statement execute function catalogue_touch_versions();

create trigger upstream_files_touch_ins after insert on upstream_files
    referencing new table as changed_rows
    for each statement execute function catalogue_touch_files();
create trigger upstream_files_touch_upd after update on upstream_files
    referencing new table as new_rows old table as old_rows
    for each statement execute function catalogue_touch_files();
create trigger upstream_files_touch_del after delete on upstream_files
    referencing old table as changed_rows
    for each statement execute function catalogue_touch_files();

-- The catalogue as the change feed last described it: per tool, its members and a digest of
-- each part (md5 of the part's rows).
create table catalogue_snapshot (
    tool_id text primary key,
    member_ids bigint[] not null,
    metadata text not null,
    versions text not null,
    files text not null,
    sources text not null
);
create index catalogue_snapshot_member_ids_idx on catalogue_snapshot using gin (member_ids);

-- The change feed, in commit order (publishes are serialised on catalogue_state).
create table catalogue_changes (
    seq bigint generated always as identity primary key,
    generation bigint not null,
    at timestamptz not null default now(),
    kind text not null constraint catalogue_changes_kind_check
        check (kind in ('added', 'changed', 'removed', 'merged', 'split', 'id_changed')),
    tool_id text not null,
    -- merged: the tool it joined; split: the tools its records went to; id_changed: the id
    -- it had.
    related_ids text[] not null default '{}',
    -- changed: which of metadata, versions, files, sources.
    parts text[] not null default '{}',
    -- added, changed, id_changed: the tool's state afterwards (md5 of its part digests).
    digest text
);
create index catalogue_changes_at_idx on catalogue_changes (at);
create index catalogue_changes_generation_idx on catalogue_changes (generation);

-- The changes up to this seq have been pruned (past retention): older cursors answer 410.
create table catalogue_changes_pruned (
    singleton boolean primary key default true constraint catalogue_changes_pruned_check
        check (singleton),
    through bigint not null default 0
);
insert into catalogue_changes_pruned default values;

-- The search index: one row per catalogue tool.
create table search_docs (
    tool_id text primary key,
    sort_key text collate "C" not null,
    name text not null,
    organization text not null,
    description text not null,
    toolclass text,
    names text not null,
    document tsvector not null,
    upstreams text[] not null,
    descriptor_types text[] not null,
    toolclasses text[] not null,
    organizations text[] not null,
    has_checker boolean not null
);
create index search_docs_document_idx on search_docs using gin (document);
create index search_docs_names_trgm_idx on search_docs using gin (names gin_trgm_ops);
create index search_docs_upstreams_idx on search_docs using gin (upstreams);
create index search_docs_descriptor_types_idx on search_docs using gin (descriptor_types);

-- Every word of the tools' names and ids, for typo tolerance: a query word that is not one
-- of them is also searched as the most similar one (trigram similarity).
create table search_lexicon (word text primary key);
create index search_lexicon_word_trgm_idx on search_lexicon using gin (word gin_trgm_ops);

create function search_words(value text) returns text language sql immutable as $$
    select coalesce(value, '') || ' ' || regexp_replace(coalesce(value, ''), '[^[:alnum:]]+', ' ', 'g')
$$;

create function search_text_array(value jsonb) returns text[] language sql immutable as $$
    select coalesce(array_agg(x), '{}') from jsonb_array_elements_text(
        case when jsonb_typeof(value) = 'array' then value
             when jsonb_typeof(value) = 'string' then jsonb_build_array(value)
             else '[]'::jsonb end) as x
$$;

-- Rebuild the search rows of the catalogue tools listed in capture_ids.
create function search_refresh() returns void language plpgsql as $$
begin
    delete from search_docs where tool_id in (select tool_id from capture_ids);
    insert into search_docs (tool_id, sort_key, name, organization, description, toolclass, names,
                             document, upstreams, descriptor_types, toolclasses, organizations,
                             has_checker)
    select c.id, c.sort_key,
           coalesce(p.doc->>'name', ''), coalesce(p.doc->>'organization', ''),
           coalesce(p.doc->>'description', ''), p.doc->'toolclass'->>'name',
           x.names,
           setweight(to_tsvector('simple', search_words(x.names)), 'A')
           || setweight(to_tsvector('simple', search_words(x.people)), 'B')
           || setweight(to_tsvector('english', x.descriptions), 'C'),
           x.upstreams, coalesce(y.types, '{}'), x.toolclasses, x.organizations, x.has_checker
    from catalogue_tools c
    join upstream_tools p on p.id = c.primary_member_id
    cross join lateral (
        select c.id || ' ' || string_agg(
                   t.external_id || ' ' || coalesce(t.doc->>'name', '') || ' '
                   || coalesce(t.doc->>'toolname', '') || ' '
                   || array_to_string(search_text_array(t.doc->'aliases'), ' '), ' ') as names,
               string_agg(coalesce(t.doc->>'description', ''), ' ') as descriptions,
               array_agg(distinct u.name) as upstreams,
               coalesce(array_agg(distinct t.doc->'toolclass'->>'name')
                        filter (where t.doc->'toolclass'->>'name' is not null), '{}')
                   as toolclasses,
               coalesce(array_agg(distinct lower(t.doc->>'organization'))
                        filter (where t.doc->>'organization' is not null), '{}')
                   as organizations,
               bool_or(coalesce(t.doc->>'has_checker', '') = 'true'
                       or coalesce(t.doc->>'checker_url', '') <> '') as has_checker,
               string_agg(coalesce(t.doc->>'organization', ''), ' ') || ' ' || coalesce((
                   select string_agg(a, ' ')
                   from catalogue_versions cv
                   join upstream_versions v on v.id = cv.upstream_version_id
                   cross join lateral unnest(search_text_array(v.doc->'author')) as a
                   where cv.tool_id = c.id), '') as people
        from catalogue_members m
        join upstream_tools t on t.id = m.upstream_tool_id
        join upstreams u on u.id = t.upstream_id
        where m.tool_id = c.id) as x
    cross join lateral (
        select array_agg(distinct upper(d)) as types
        from catalogue_versions cv
        join upstream_versions v on v.id = cv.upstream_version_id
        cross join lateral unnest(search_text_array(v.doc->'descriptor_type')) as d
        where cv.tool_id = c.id) as y
    where c.id in (select tool_id from capture_ids);
    insert into search_lexicon (word)
    select distinct w
    from search_docs d
    cross join lateral unnest(tsvector_to_array(to_tsvector('simple', search_words(d.names)))) as w
    where d.tool_id in (select tool_id from capture_ids)
      and length(w) between 3 and 60 and w ~ '[[:alpha:]]'
    on conflict do nothing;
end $$;

-- The digests of each part of the catalogue tools listed in capture_ids, from the catalogue.
create function catalogue_parts() returns table (
    tool_id text, member_ids bigint[], metadata text, versions text, files text, sources text)
language plpgsql stable as $$
#variable_conflict use_column
begin
    return query
    select c.id,
           (select array_agg(m.upstream_tool_id order by m.upstream_tool_id)
            from catalogue_members m where m.tool_id = c.id),
           (select md5(coalesce(string_agg(t.doc::text, E'\x1f'
                       order by t.id <> c.primary_member_id, u.priority, u.name, t.external_id), ''))
            from catalogue_members m join upstream_tools t on t.id = m.upstream_tool_id
            join upstreams u on u.id = t.upstream_id where m.tool_id = c.id),
           (select md5(coalesce(string_agg(cv.key || E'\x1f' || cv.position || E'\x1f'
                       || cv.conflict || E'\x1f' || v.doc::text, E'\x1e' order by cv.key), ''))
            from catalogue_versions cv join upstream_versions v on v.id = cv.upstream_version_id
            where cv.tool_id = c.id),
           (select md5(coalesce(string_agg(cv.key || E'\x1f' || f.descriptor_type || E'\x1f'
                       || f.path || E'\x1f' || f.file_type || E'\x1f' || coalesce(f.sha256, '')
                       || E'\x1f' || coalesce(f.url, ''), E'\x1e'
                       order by cv.key, f.descriptor_type, f.path), ''))
            from catalogue_versions cv
            join upstream_files f on f.upstream_version_id = cv.upstream_version_id
            where cv.tool_id = c.id),
           md5((select coalesce(string_agg(u.name || '/' || t.external_id, E'\x1f'
                       order by u.name, t.external_id), '')
                from catalogue_members m join upstream_tools t on t.id = m.upstream_tool_id
                join upstreams u on u.id = t.upstream_id where m.tool_id = c.id)
               || E'\x1e' || (select coalesce(string_agg(cv.key || '=' || cv.source_ids::text,
                                                        E'\x1f' order by cv.key), '')
                              from catalogue_versions cv where cv.tool_id = c.id))
    from catalogue_tools c where c.id in (select tool_id from capture_ids);
end $$;

-- Compare the catalogue tools in capture_ids with their snapshot; record the differences in
-- catalogue_changes at *gen* and bring the snapshot and the search index up to date.
create function catalogue_diff(gen bigint) returns void language plpgsql as $$
declare
    large boolean := (select count(*) from capture_ids) >= 500;
begin
    -- After a large publish the planner must see the new rows, or the per-tool lookups below
    -- turn into scans of whole tables.
    if large then
        analyze capture_ids;
        analyze catalogue_tools;
        analyze catalogue_members;
        analyze catalogue_versions;
    end if;
    create temporary table if not exists capture_new (
        tool_id text primary key, member_ids bigint[], metadata text, versions text,
        files text, sources text) on commit drop;
    truncate capture_new;
    insert into capture_new select * from catalogue_parts();

    create temporary table if not exists capture_old (
        tool_id text primary key, member_ids bigint[], metadata text, versions text,
        files text, sources text) on commit drop;
    truncate capture_old;
    insert into capture_old
    select s.* from catalogue_snapshot s where s.tool_id in (select tool_id from capture_ids);
    if large then
        analyze capture_new;
        analyze capture_old;
    end if;

    -- Tools that are gone: removed, merged into one other tool, split into several, or renamed.
    -- (A consumer drops them; a tool that keeps its id after a split is announced as changed
    -- below, after this.)
    insert into catalogue_changes (generation, kind, tool_id, related_ids, digest)
    select gen,
           case when d.dest is null then 'removed'
                when cardinality(d.dest) > 1 then 'split'
                when d.same_members then 'id_changed'
                else 'merged' end,
           case when d.dest is not null and cardinality(d.dest) = 1 and d.same_members
                then d.dest[1] else o.tool_id end,
           case when d.dest is not null and cardinality(d.dest) = 1 and d.same_members
                then array[o.tool_id] else coalesce(d.dest, '{}') end,
           case when d.dest is not null and cardinality(d.dest) = 1 and d.same_members
                then (select md5(n.metadata || n.versions || n.files || n.sources)
                      from capture_new n where n.tool_id = d.dest[1]) end
    from capture_old o
    cross join lateral (
        select array_agg(distinct m.tool_id order by m.tool_id) as dest,
               bool_and(n.member_ids = o.member_ids
                        and not exists (select 1 from capture_old o2
                                        where o2.tool_id = m.tool_id)) as same_members
        from catalogue_members m
        join capture_new n on n.tool_id = m.tool_id
        where m.upstream_tool_id = any(o.member_ids)) as d
    where not exists (select 1 from capture_new n where n.tool_id = o.tool_id)
       -- or its records all moved, together, to a tool that is new: it was renamed (and
       -- another tool took its id).
       or (d.same_members and cardinality(d.dest) = 1 and d.dest[1] <> o.tool_id)
       -- or its records went to several tools (it may keep its id with some of them).
       or cardinality(d.dest) > 1
    order by o.tool_id;

    -- Tools that are new (unless announced above under their previous id).
    insert into catalogue_changes (generation, kind, tool_id, digest)
    select gen, 'added', n.tool_id, md5(n.metadata || n.versions || n.files || n.sources)
    from capture_new n
    where not exists (select 1 from capture_old o where o.tool_id = n.tool_id)
      and n.tool_id not in (select ch.tool_id from catalogue_changes ch
                            where ch.generation = gen and ch.kind = 'id_changed')
    order by n.tool_id;

    -- Tools that changed.
    insert into catalogue_changes (generation, kind, tool_id, parts, digest)
    select gen, 'changed', n.tool_id,
           array_remove(array[
               case when n.metadata <> o.metadata then 'metadata' end,
               case when n.versions <> o.versions then 'versions' end,
               case when n.files <> o.files then 'files' end,
               case when n.sources <> o.sources then 'sources' end], null),
           md5(n.metadata || n.versions || n.files || n.sources)
    from capture_new n join capture_old o on o.tool_id = n.tool_id
    where (n.metadata, n.versions, n.files, n.sources)
          is distinct from (o.metadata, o.versions, o.files, o.sources)
    order by n.tool_id;

    delete from catalogue_snapshot where tool_id in (select tool_id from capture_ids);
    insert into catalogue_snapshot select * from capture_new;
    delete from capture_ids c
    where exists (select 1 from capture_new n join capture_old o using (tool_id)
                  where n.tool_id = c.tool_id
                    and (n.metadata, n.versions, n.files, n.sources)
                        = (o.metadata, o.versions, o.files, o.sources));
    perform search_refresh();
end $$;

-- At every generation bump: the catalogue tools touched since the last one, directly or
-- through their upstream records, are compared with their snapshot.
create function catalogue_capture() returns trigger language plpgsql as $$
begin
    create temporary table if not exists capture_ids (tool_id text primary key) on commit drop;
    truncate capture_ids;
    insert into capture_ids
    select tool_id from catalogue_touched where tool_id is not null
    union
    select m.tool_id from catalogue_members m
    where m.upstream_tool_id in (
        select upstream_tool_id from catalogue_touched where upstream_tool_id is not null
        union
        select v.upstream_tool_id from upstream_versions v
        where v.id in (select upstream_version_id from catalogue_touched
                       where upstream_version_id is not null))
    union
    select s.tool_id from catalogue_snapshot s
    where s.member_ids && array(select upstream_tool_id from catalogue_touched
                                where upstream_tool_id is not null)
    on conflict do nothing;
    delete from catalogue_touched;
    perform catalogue_diff(new.generation);
    return null;
end $$;

create trigger catalogue_state_capture after update of generation on catalogue_state
    for each row when (new.generation is distinct from old.generation)
    execute function catalogue_capture();

-- An existing catalogue enters the feed as added tools at its current generation.
create temporary table capture_ids (tool_id text primary key) on commit drop;
insert into capture_ids select id from catalogue_tools;
delete from catalogue_touched;
select catalogue_diff((select generation from catalogue_state));
