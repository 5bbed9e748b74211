-- 0014_capture_cost.sql
-- Purpose: the capture at the generation bump (change feed, snapshot, search index; migrations
--          0010, 0011) costs what the publish changed, not what the catalogue holds, and a
--          first publish builds its indexes instead of filling them. What it produces is
--          unchanged: the same feed entries (digests computed exactly as before), the same
--          snapshot, search rows and lexicon.
--
--          - The tools that held a touched record are found by one probe of the snapshot's
--            index per record, not by a pass over the whole snapshot, unless the records are
--            many for the snapshot's size.
--          - The catalogue tables are analysed only when the capture covers more tools than
--            their statistics know of (a first publish), not after every publish of 500 tools
--            (three samples of 30,000 rows: most of an incremental capture).
--          - Index probes are costed as what they are in a warm catalogue (random_page_cost),
--            so a capture of a few thousand tools probes the catalogue by tool id instead of
--            hashing whole tables.
--          - The snapshot rows and search rows that do not change are not rewritten.
--          - An empty snapshot, search index or lexicon (a first publish) is filled without its
--            GIN indexes, which are then built in one pass with more memory.
--          - The JSON arrays of the search rows are read without a SQL function call per value.
-- Created: 2026-12-01

-- A JSON value as the array search_text_array reads: an array as it is, a string as an array
-- of it, anything else as an empty array. Inlined where it is used (no call per value).
create or replace function search_json_array(value jsonb) returns jsonb language sql immutable as $$
    select case jsonb_typeof(value) when 'array' then value
                                     when 'string' then jsonb_build_array(value)
                                     else '[]'::jsonb end
$$;

-- Drop the indexes of *tbl* (and the primary key and unique constraints they serve, unless
-- something depends on them) and return the statements that make them again, for
-- capture_build_indexes once the table is filled: building an index over a table's rows is a
-- quarter of the cost of inserting the rows into it one by one.
create or replace function capture_drop_indexes(tbl regclass) returns text[]
language plpgsql as $$
declare
    remake text[] := '{}';
    found record;
begin
    for found in
        select i.indexrelid as idx, c.oid as con, c.conname
        from pg_index i
        left join pg_constraint c on c.conindid = i.indexrelid and c.conrelid = tbl
        where i.indrelid = tbl
          and not exists (select 1 from pg_constraint f
                          where f.contype = 'f' and f.conindid = i.indexrelid)
          and not exists (select 1 from pg_depend d
                          where d.refclassid = 'pg_constraint'::regclass and d.refobjid = c.oid
                            and d.deptype <> 'i')
        order by c.oid nulls last, i.indexrelid
    loop
        if found.con is null then
            remake := remake || pg_get_indexdef(found.idx);
            execute format('drop index %s', found.idx::regclass);
        else
            remake := remake || format('alter table %s add constraint %I %s', tbl, found.conname,
                                       pg_get_constraintdef(found.con));
            execute format('alter table %s drop constraint %I', tbl, found.conname);
        end if;
    end loop;
    return remake;
end $$;

-- Make again the indexes capture_drop_indexes dropped.
create or replace function capture_build_indexes(remake text[]) returns void
language plpgsql as $$
declare
    statement text;
begin
    foreach statement in array remake loop
        execute statement;
    end loop;
end $$;

-- Rebuild the search rows of the catalogue tools listed in capture_ids.
create or replace function search_refresh() returns void language plpgsql as $$
declare
    tools bigint := (select count(*) from capture_ids);
    -- A first publish: the index is built after it is filled.
    bulk boolean := tools >= 1000 and not exists (select 1 from search_docs);
    indexes text[];
begin
    if bulk then
        indexes := capture_drop_indexes('search_docs');
    else
        delete from search_docs where tool_id in (select tool_id from capture_ids);
    end if;
    insert into search_docs (tool_id, sort_key, name, organization, description, toolclass, names,
                             document, upstreams, descriptor_types, toolclasses, organizations,
                             has_checker)
    with ids as materialized (
        select c.id, c.sort_key, c.primary_member_id
        from capture_ids i join catalogue_tools c on c.id = i.tool_id),
    mem as (
        select i.id,
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
        from ids i
        join catalogue_members m on m.tool_id = i.id
        join upstream_tools t on t.id = m.upstream_tool_id
        join upstreams u on u.id = t.upstream_id
        group by i.id),
    ver as (
        select cv.tool_id, cv.key, v.doc
        from ids i
        join catalogue_versions cv on cv.tool_id = i.id
        join upstream_versions v on v.id = cv.upstream_version_id),
    authors as (
        select ver.tool_id, string_agg(a.a, ' ' order by ver.key, a.n) as authors
        from ver
        cross join lateral jsonb_array_elements_text(search_json_array(ver.doc->'author'))
            with ordinality as a(a, n)
        where jsonb_typeof(ver.doc->'author') in ('array', 'string')
        group by ver.tool_id),
    types as (
        select ver.tool_id, array_agg(distinct upper(d)) as types
        from ver
        cross join lateral jsonb_array_elements_text(search_json_array(ver.doc->'descriptor_type'))
            as d
        where jsonb_typeof(ver.doc->'descriptor_type') in ('array', 'string')
        group by ver.tool_id)
    select i.id, i.sort_key,
           coalesce(p.doc->>'name', ''), coalesce(p.doc->>'organization', ''),
           coalesce(p.doc->>'description', ''), p.doc->'toolclass'->>'name',
           x.names,
           setweight(to_tsvector('simple', search_words(x.names)), 'A')
           || case when btrim(x.organizations_text || ' ' || coalesce(a.authors, '')) = ''
                   then ''::tsvector
                   else setweight(to_tsvector('simple', search_words(
                            x.organizations_text || ' ' || coalesce(a.authors, ''))), 'B') end
           || case when btrim(x.descriptions) = '' then ''::tsvector
                   else setweight(to_tsvector('english', x.descriptions), 'C') end,
           x.upstreams, coalesce(y.types, '{}'), x.toolclasses, x.organizations, x.has_checker
    from ids i
    join upstream_tools p on p.id = i.primary_member_id
    join mem x on x.id = i.id
    left join authors a on a.tool_id = i.id
    left join types y on y.tool_id = i.id;
    if bulk then
        perform capture_build_indexes(indexes);
    end if;
    -- The name words are the document's lexemes of weight A (read from it, not parsed again).
    bulk := tools >= 1000 and not exists (select 1 from search_lexicon);
    if bulk then
        indexes := capture_drop_indexes('search_lexicon');
    end if;
    insert into search_lexicon (word)
    select distinct w
    from search_docs d
    cross join lateral unnest(tsvector_to_array(ts_filter(d.document, '{a}'))) as w
    where d.tool_id in (select tool_id from capture_ids)
      and length(w) between 3 and 60 and w ~ '[[:alpha:]]'
      and not exists (select 1 from search_lexicon l where l.word = w)
    on conflict do nothing;
    if bulk then
        perform capture_build_indexes(indexes);
    end if;
end $$;

-- Compare the catalogue tools in capture_ids with their snapshot; record the differences in
-- catalogue_changes at *gen* and bring the snapshot and the search index up to date.
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
    create temporary table if not exists capture_new (
        tool_id text, member_ids bigint[], metadata text, versions text, files text,
        sources text) on commit drop;
    truncate capture_new;
    insert into capture_new select * from catalogue_parts();

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
    insert into catalogue_snapshot
    select n.* from capture_new n
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
    perform search_refresh();
end $$;

-- At every generation bump: the catalogue tools touched since the last one, directly or
-- through their upstream records, are compared with their snapshot.
create or replace function catalogue_capture() returns trigger language plpgsql as $$
declare
    records bigint;
    pages bigint;
begin
    -- The work tables have no index: each is read whole, or probed from the catalogue's side,
    -- and one index more per row written is a quarter of what a large capture costs.
    create temporary table if not exists capture_touched (
        tool_id text, upstream_tool_id bigint, upstream_version_id bigint) on commit drop;
    truncate capture_touched;
    create temporary table if not exists capture_ids (tool_id text) on commit drop;
    truncate capture_ids;
    create temporary table if not exists capture_records (upstream_tool_id bigint)
        on commit drop;
    truncate capture_records;
    -- What was touched is taken as it is deleted: a touch committed meanwhile by another
    -- transaction stays for the next capture.
    with taken as (
        delete from catalogue_touched
        returning tool_id, upstream_tool_id, upstream_version_id)
    insert into capture_touched select * from taken;
    insert into capture_records
    select upstream_tool_id from capture_touched where upstream_tool_id is not null
    union
    select v.upstream_tool_id from upstream_versions v
    where v.id in (select upstream_version_id from capture_touched
                   where upstream_version_id is not null);
    get diagnostics records = row_count;
    if records >= 500 then
        analyze capture_records;
    end if;
    insert into capture_ids
    select tool_id from capture_touched where tool_id is not null
    union
    select m.tool_id from catalogue_members m join capture_records r using (upstream_tool_id);
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

-- As in 0011 (create or replace drops a function's settings): sorts and hashes of a whole
-- catalogue in memory, and no JIT compilation. And: probes by tool id cost what they do in a
-- catalogue kept in memory (the default of 4 is for a disk that seeks), and an index is built
-- with room to sort.
alter function catalogue_capture() set work_mem = '64MB';
alter function catalogue_capture() set jit = off;
alter function catalogue_capture() set random_page_cost = 1.1;
alter function catalogue_capture() set maintenance_work_mem = '256MB';
