-- 0023_capture_follows_touches.sql
-- Purpose: the capture at the generation bump (migrations 0010, 0011, 0014, 0020) reads less
--          for each tool of an incremental publish. What it produces is unchanged: the same
--          feed entries and digests, snapshot, search rows and lexicon.
--
--          - A record touched through its membership (the touch rows of catalogue_members carry
--            the tool it joined or left) is not looked up again, neither among the catalogue's
--            members nor in the snapshot: the tools those touches name are the tools that hold
--            it now and held it when last described (every write of catalogue_members records
--            its old and new tool). Records touched alone (their document, their versions or
--            files) are looked up as before. In the merge benchmark's 1% change every touched
--            record was of the first kind: 15,000 records, two index probes each, for nothing.
--          - The primary record of a tool of several records is read for those tools only,
--            not probed for every tool and then dropped.
--          - Where the records of an old tool went is looked up only for old tools whose
--            members changed (a tool that keeps its id and its members went nowhere).
-- Created: 2026-12-02

-- As in 0020 (the parts of the tools listed in capture_tools), the primary record of a tool of
-- several records read only for those.
create or replace function capture_parts() returns table (
    tool_id text, member_ids bigint[], metadata text, versions text, files text, sources text,
    primary_doc jsonb, names text, descriptions text, organizations_text text, upstreams text[],
    toolclasses text[], organizations text[], has_checker boolean, authors text,
    descriptor_types text[])
language plpgsql stable as $$
#variable_conflict use_column
begin
    return query
    with mem as (
        select i.id,
               array_agg(m.upstream_tool_id order by m.upstream_tool_id) as member_ids,
               md5(coalesce(string_agg(t.doc::text, E'\x1f'
                   order by t.id <> i.primary_member_id, u.priority, u.name, t.external_id), ''))
                   as metadata,
               coalesce(string_agg(u.name || '/' || t.external_id, E'\x1f'
                   order by u.name, t.external_id), '') as source_names,
               null::jsonb as primary_doc,
               i.id || ' ' || string_agg(
                   t.external_id || ' ' || coalesce(t.doc->>'name', '') || ' '
                   || coalesce(t.doc->>'toolname', '') || ' '
                   || case jsonb_typeof(t.doc->'aliases')
                          when 'string' then t.doc->>'aliases'
                          when 'array' then case jsonb_array_length(t.doc->'aliases')
                              when 0 then ''
                              when 1 then coalesce(t.doc->'aliases'->>0, '')
                              else coalesce((select string_agg(a, ' ')
                                             from jsonb_array_elements_text(t.doc->'aliases')
                                                 as a), '') end
                          else '' end, ' '
                   order by u.name, t.external_id) as names,
               string_agg(coalesce(t.doc->>'description', ''), ' '
                   order by u.name, t.external_id) as descriptions,
               string_agg(coalesce(t.doc->>'organization', ''), ' '
                   order by u.name, t.external_id) as organizations_text,
               array_agg(distinct u.name) as upstreams,
               coalesce(array_agg(distinct t.doc->'toolclass'->>'name')
                        filter (where t.doc->'toolclass'->>'name' is not null), '{}')
                   as toolclasses,
               coalesce(array_agg(distinct lower(t.doc->>'organization'))
                        filter (where t.doc->>'organization' is not null), '{}')
                   as organizations,
               bool_or(coalesce(t.doc->>'has_checker', '') = 'true'
                       or coalesce(t.doc->>'checker_url', '') <> '') as has_checker
        from capture_tools i
        join catalogue_members m on m.tool_id = i.id
        join upstream_tools t on t.id = m.upstream_tool_id
        join upstreams u on u.id = t.upstream_id
        where not i.single
        group by i.id
        union all
        select i.id, array[t.id], md5(coalesce(t.doc::text, '')),
               coalesce(u.name || '/' || t.external_id, ''),
               t.doc,
               i.id || ' ' || (
                   t.external_id || ' ' || coalesce(t.doc->>'name', '') || ' '
                   || coalesce(t.doc->>'toolname', '') || ' '
                   || case jsonb_typeof(t.doc->'aliases')
                          when 'string' then t.doc->>'aliases'
                          when 'array' then case jsonb_array_length(t.doc->'aliases')
                              when 0 then ''
                              when 1 then coalesce(t.doc->'aliases'->>0, '')
                              else coalesce((select string_agg(a, ' ')
                                             from jsonb_array_elements_text(t.doc->'aliases')
                                                 as a), '') end
                          else '' end),
               coalesce(t.doc->>'description', ''),
               coalesce(t.doc->>'organization', ''),
               array[u.name],
               case when t.doc->'toolclass'->>'name' is null then '{}'::text[]
                    else array[t.doc->'toolclass'->>'name'] end,
               case when t.doc->>'organization' is null then '{}'::text[]
                    else array[lower(t.doc->>'organization')] end,
               coalesce(t.doc->>'has_checker', '') = 'true'
               or coalesce(t.doc->>'checker_url', '') <> ''
        from capture_tools i
        join upstream_tools t on t.id = i.primary_member_id
        join upstreams u on u.id = t.upstream_id
        where i.single),
    ver as (
        -- A version whose upstream row is missing adds nothing to the digest of versions
        -- (its element is null) nor to the search row, but still counts among the sources.
        -- Authors: every value of every version, in the order of the keys and then of the
        -- values. Descriptor types: the distinct values of every version, in upper case.
        select s.tool_id,
               md5(coalesce(string_agg(s.part, E'\x1e'), '')) as versions,
               coalesce(string_agg(s.source, E'\x1f'), '') as sources,
               string_agg(s.authors, ' ') as authors,
               capture_array_cat(s.types) as types
        from (select cv.tool_id,
                     cv.key || E'\x1f' || cv.position || E'\x1f' || cv.conflict || E'\x1f'
                     || v.doc::text as part,
                     cv.key || '=' || cv.source_ids::text as source,
                     case when jsonb_typeof(v.doc->'author') in ('array', 'string') then
                         (select string_agg(a, ' ')
                          from jsonb_array_elements_text(search_json_array(v.doc->'author'))
                              as a) end as authors,
                     case when jsonb_typeof(v.doc->'descriptor_type') in ('array', 'string') then
                         array(select upper(d) from jsonb_array_elements_text(
                                   search_json_array(v.doc->'descriptor_type')) as d) end
                         as types
              from capture_tools i
              join catalogue_versions cv on cv.tool_id = i.id
              left join upstream_versions v on v.id = cv.upstream_version_id
              order by cv.tool_id, cv.key) s
        group by s.tool_id),
    fil as (
        select s.tool_id, md5(coalesce(string_agg(s.part, E'\x1e'), '')) as files
        from (select cv.tool_id,
                     cv.key || E'\x1f' || f.descriptor_type || E'\x1f' || f.path || E'\x1f'
                     || f.file_type || E'\x1f' || coalesce(f.sha256, '') || E'\x1f'
                     || coalesce(f.url, '') as part
              from capture_tools i
              join catalogue_versions cv on cv.tool_id = i.id
              join upstream_files f on f.upstream_version_id = cv.upstream_version_id
              order by cv.tool_id, cv.key, f.descriptor_type, f.path) s
        group by s.tool_id)
    select i.id, mem.member_ids,
           coalesce(mem.metadata, md5('')),
           coalesce(ver.versions, md5('')),
           coalesce(fil.files, md5('')),
           md5(coalesce(mem.source_names, '') || E'\x1e' || coalesce(ver.sources, '')),
           coalesce(mem.primary_doc,
                    (select p.doc from upstream_tools p where p.id = i.primary_member_id)),
           mem.names, mem.descriptions, mem.organizations_text, mem.upstreams, mem.toolclasses,
           mem.organizations, mem.has_checker, ver.authors,
           case when ver.types is not null then
               array(select distinct d from unnest(ver.types) as d order by d) end
    from capture_tools i
    left join mem on mem.id = i.id
    left join ver on ver.tool_id = i.id
    left join fil on fil.tool_id = i.id;
end $$;


-- As in 0020 (the tools in capture_ids compared with their snapshot, the differences recorded in
-- catalogue_changes at *gen*, the snapshot and search index brought up to date), with the
-- destinations of old tools looked up only for those whose members changed.
create or replace function catalogue_diff(gen bigint) returns void language plpgsql as $$
declare
    tools bigint := (select count(*) from capture_ids);
    large boolean := tools >= 500;
    known real := (select c.reltuples from pg_class c where c.oid = 'catalogue_tools'::regclass);
    bulk boolean;
    indexes text[];
begin
    if large then
        analyze capture_ids;
    end if;
    -- The joins below are planned from the catalogue's statistics: refreshed when they describe
    -- a catalogue much smaller than this capture (after a first publish), not otherwise.
    if large and tools > 2 * greatest(known, 0) then
        analyze catalogue_tools;
        analyze catalogue_members;
        analyze catalogue_versions;
    end if;
    -- The tools still in the catalogue, and whether each is a tool of one record (its primary
    -- record and no other): its digests and search row are computed from that record alone.
    create temporary table if not exists capture_tools (
        id text, sort_key text collate "C", primary_member_id bigint, single boolean)
        on commit drop;
    truncate capture_tools;
    insert into capture_tools
    select c.id, c.sort_key, c.primary_member_id,
           coalesce(k.members = 1 and k.first = c.primary_member_id, false)
    from capture_ids i
    join catalogue_tools c on c.id = i.tool_id
    left join (select m.tool_id, count(*) as members, min(m.upstream_tool_id) as first
               from catalogue_members m
               where m.tool_id in (select tool_id from capture_ids)
               group by m.tool_id) k on k.tool_id = c.id;
    if large then
        analyze capture_tools;
    end if;
    create temporary table if not exists capture_new (
        tool_id text, member_ids bigint[], metadata text, versions text, files text,
        sources text, primary_doc jsonb, names text, descriptions text,
        organizations_text text, upstreams text[], toolclasses text[], organizations text[],
        has_checker boolean, authors text, descriptor_types text[]) on commit drop;
    truncate capture_new;
    insert into capture_new select * from capture_parts();

    create temporary table if not exists capture_old (
        tool_id text, member_ids bigint[], metadata text, versions text, files text,
        sources text) on commit drop;
    truncate capture_old;
    insert into capture_old
    select s.* from catalogue_snapshot s where s.tool_id in (select tool_id from capture_ids);
    if large then
        analyze capture_new;
        analyze capture_old;
    end if;

    -- Where the records of each old tool are now: the new tools holding them, and whether
    -- those hold exactly the same records and are not themselves old tools.
    create temporary table if not exists capture_dest (
        tool_id text, dest text[], same_members boolean) on commit drop;
    truncate capture_dest;
    insert into capture_dest
    select o.tool_id,
           array_agg(distinct m.tool_id order by m.tool_id),
           bool_and(n.member_ids = o.member_ids and o2.tool_id is null)
    from capture_old o
    cross join lateral unnest(o.member_ids) as r(upstream_tool_id)
    join catalogue_members m on m.upstream_tool_id = r.upstream_tool_id
    join capture_new n on n.tool_id = m.tool_id
    left join capture_old o2 on o2.tool_id = m.tool_id
    where not exists (select 1 from capture_new s
                      where s.tool_id = o.tool_id and s.member_ids = o.member_ids)
    group by o.tool_id;

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
                then md5(n.metadata || n.versions || n.files || n.sources) end
    from capture_old o
    left join capture_dest d on d.tool_id = o.tool_id
    left join capture_new n on n.tool_id = d.dest[1]
    left join capture_new self on self.tool_id = o.tool_id
    where self.tool_id is null
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

    -- The snapshot takes the new rows; a row that is the same as before stays as it is.
    bulk := tools >= 1000 and not exists (select 1 from catalogue_snapshot);
    if bulk then
        indexes := capture_drop_indexes('catalogue_snapshot');
    else
        delete from catalogue_snapshot s using capture_old o
        where s.tool_id = o.tool_id
          and not exists (
              select 1 from capture_new n
              where n.tool_id = o.tool_id
                and (n.member_ids, n.metadata, n.versions, n.files, n.sources)
                    is not distinct from (o.member_ids, o.metadata, o.versions, o.files, o.sources));
    end if;
    insert into catalogue_snapshot (tool_id, member_ids, metadata, versions, files, sources)
    select n.tool_id, n.member_ids, n.metadata, n.versions, n.files, n.sources from capture_new n
    where not exists (
        select 1 from capture_old o
        where o.tool_id = n.tool_id
          and (n.member_ids, n.metadata, n.versions, n.files, n.sources)
              is not distinct from (o.member_ids, o.metadata, o.versions, o.files, o.sources));
    if bulk then
        perform capture_build_indexes(indexes);
    end if;
    delete from capture_ids c
    using capture_new n join capture_old o using (tool_id)
    where n.tool_id = c.tool_id
      and (n.metadata, n.versions, n.files, n.sources)
          = (o.metadata, o.versions, o.files, o.sources);
    delete from capture_tools c
    using capture_new n join capture_old o using (tool_id)
    where n.tool_id = c.id
      and (n.metadata, n.versions, n.files, n.sources)
          = (o.metadata, o.versions, o.files, o.sources);
    perform search_refresh();
end $$;

-- At every generation bump: the catalogue tools touched since the last one, directly or
-- through their upstream records, are compared with their snapshot. A record touched through
-- its membership comes with its tools; only records touched alone are looked up.
create or replace function catalogue_capture() returns trigger language plpgsql as $$
declare
    records bigint;
    pages bigint;
begin
    -- The work tables have no index: each is read whole, or probed from the catalogue's side,
    -- and one index more per row written is a quarter of what a large capture costs.
    create temporary table if not exists capture_ids (tool_id text) on commit drop;
    truncate capture_ids;
    create temporary table if not exists capture_records (upstream_tool_id bigint)
        on commit drop;
    truncate capture_records;
    create temporary table if not exists capture_touched_versions (upstream_version_id bigint)
        on commit drop;
    truncate capture_touched_versions;
    -- What was touched is taken as it is deleted (a touch committed meanwhile by another
    -- transaction stays for the next capture), in one pass: the distinct tools, records and
    -- versions (a first publish touches each tool and record several times).
    with taken as (
        delete from catalogue_touched
        returning tool_id, upstream_tool_id, upstream_version_id),
    tools as (
        insert into capture_ids select distinct tool_id from taken where tool_id is not null),
    versions as (
        insert into capture_touched_versions
        select distinct upstream_version_id from taken where upstream_version_id is not null)
    insert into capture_records
    select distinct upstream_tool_id from taken
    where upstream_tool_id is not null and tool_id is null;
    insert into capture_records
    select distinct v.upstream_tool_id from upstream_versions v
    where v.id in (select upstream_version_id from capture_touched_versions)
      and not exists (select 1 from capture_records r
                      where r.upstream_tool_id = v.upstream_tool_id);
    select count(*) into records from capture_records;
    if records >= 500 then
        analyze capture_records;
        analyze capture_ids;
    end if;
    insert into capture_ids
    select distinct m.tool_id
    from catalogue_members m join capture_records r using (upstream_tool_id)
    where not exists (select 1 from capture_ids i where i.tool_id = m.tool_id);
    -- The tools that held those records when last described: found by a probe of the
    -- snapshot's index per record (a few microseconds each), or by one pass over the snapshot
    -- when the records are many for its size (a pass costs about as much as a probe per seven
    -- rows).
    pages := pg_relation_size('catalogue_snapshot') / current_setting('block_size')::bigint;
    if records > 0 and records < 5 * pages then
        insert into capture_ids
        select distinct s.tool_id
        from capture_records r
        join catalogue_snapshot s on s.member_ids && array[r.upstream_tool_id]
        where not exists (select 1 from capture_ids i where i.tool_id = s.tool_id);
    elsif records > 0 then
        insert into capture_ids
        select distinct s.tool_id
        from catalogue_snapshot s cross join lateral unnest(s.member_ids) as r(upstream_tool_id)
        where r.upstream_tool_id in (select upstream_tool_id from capture_records)
          and not exists (select 1 from capture_ids i where i.tool_id = s.tool_id);
    end if;
    perform catalogue_diff(new.generation);
    return null;
end $$;

-- As in 0020 (create or replace drops a function's settings).
alter function catalogue_capture() set work_mem = '64MB';
alter function catalogue_capture() set jit = off;
alter function catalogue_capture() set random_page_cost = 1.1;
alter function catalogue_capture() set maintenance_work_mem = '256MB';
-- Aggregates read rows in the order a subquery gives them (capture_parts): no parallel plan.
alter function catalogue_capture() set max_parallel_workers_per_gather = 0;
