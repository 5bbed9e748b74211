-- 0011_set_based_capture.sql
-- Purpose: the change-feed capture and the search index refresh of migration 0010, rewritten
--          set-based. They computed each touched tool's digests and search row with
--          correlated subqueries (about 1.2-1.6 ms a tool: two to three minutes to publish a
--          100,000-tool catalogue); they now aggregate the touched tools' members, versions and
--          files in one pass each, and join the results. The digests are computed exactly as
--          before (same expressions, same orders), so snapshots taken before stay comparable.
--          The trigram index on search_docs.names was never read (typos are corrected through
--          search_lexicon) and only slowed every refresh: it is dropped.
-- Created: 2026-12-01

drop index if exists search_docs_names_trgm_idx;

-- The digests of each part of the catalogue tools listed in capture_ids, from the catalogue.
create or replace function catalogue_parts() returns table (
    tool_id text, member_ids bigint[], metadata text, versions text, files text, sources text)
language plpgsql stable as $$
#variable_conflict use_column
begin
    return query
    with ids as materialized (
        select c.id, c.primary_member_id
        from capture_ids i join catalogue_tools c on c.id = i.tool_id),
    mem as (
        select i.id,
               array_agg(m.upstream_tool_id order by m.upstream_tool_id) as member_ids,
               md5(coalesce(string_agg(t.doc::text, E'\x1f'
                   order by t.id <> i.primary_member_id, u.priority, u.name, t.external_id), ''))
                   as metadata,
               coalesce(string_agg(u.name || '/' || t.external_id, E'\x1f'
                   order by u.name, t.external_id), '') as names
        from ids i
        join catalogue_members m on m.tool_id = i.id
        join upstream_tools t on t.id = m.upstream_tool_id
        join upstreams u on u.id = t.upstream_id
        group by i.id),
    ver as (
        -- A version whose upstream row is missing adds nothing to the digest of versions
        -- (its element is null) but still counts among the sources, as before.
        select cv.tool_id,
               md5(coalesce(string_agg(cv.key || E'\x1f' || cv.position || E'\x1f'
                   || cv.conflict || E'\x1f' || v.doc::text, E'\x1e' order by cv.key), ''))
                   as versions,
               coalesce(string_agg(cv.key || '=' || cv.source_ids::text, E'\x1f'
                   order by cv.key), '') as sources
        from ids i
        join catalogue_versions cv on cv.tool_id = i.id
        left join upstream_versions v on v.id = cv.upstream_version_id
        group by cv.tool_id),
    fil as (
        select cv.tool_id,
               md5(coalesce(string_agg(cv.key || E'\x1f' || f.descriptor_type || E'\x1f'
                   || f.path || E'\x1f' || f.file_type || E'\x1f' || coalesce(f.sha256, '')
                   || E'\x1f' || coalesce(f.url, ''), E'\x1e'
                   order by cv.key, f.descriptor_type, f.path), '')) as files
        from ids i
        join catalogue_versions cv on cv.tool_id = i.id
        join upstream_files f on f.upstream_version_id = cv.upstream_version_id
        group by cv.tool_id)
    select i.id, mem.member_ids,
           coalesce(mem.metadata, md5('')),
           coalesce(ver.versions, md5('')),
           coalesce(fil.files, md5('')),
           md5(coalesce(mem.names, '') || E'\x1e' || coalesce(ver.sources, ''))
    from ids i
    left join mem on mem.id = i.id
    left join ver on ver.tool_id = i.id
    left join fil on fil.tool_id = i.id;
end $$;

-- Rebuild the search rows of the catalogue tools listed in capture_ids.
create or replace function search_refresh() returns void language plpgsql as $$
begin
    delete from search_docs where tool_id in (select tool_id from capture_ids);
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
                   || array_to_string(search_text_array(t.doc->'aliases'), ' '), ' '
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
        cross join lateral unnest(search_text_array(ver.doc->'author')) with ordinality as a(a, n)
        group by ver.tool_id),
    types as (
        select ver.tool_id, array_agg(distinct upper(d)) as types
        from ver cross join lateral unnest(search_text_array(ver.doc->'descriptor_type')) as d
        group by ver.tool_id)
    select i.id, i.sort_key,
           coalesce(p.doc->>'name', ''), coalesce(p.doc->>'organization', ''),
           coalesce(p.doc->>'description', ''), p.doc->'toolclass'->>'name',
           x.names,
           setweight(to_tsvector('simple', search_words(x.names)), 'A')
           || setweight(to_tsvector('simple', search_words(
                  x.organizations_text || ' ' || coalesce(a.authors, ''))), 'B')
           || setweight(to_tsvector('english', x.descriptions), 'C'),
           x.upstreams, coalesce(y.types, '{}'), x.toolclasses, x.organizations, x.has_checker
    from ids i
    join upstream_tools p on p.id = i.primary_member_id
    join mem x on x.id = i.id
    left join authors a on a.tool_id = i.id
    left join types y on y.tool_id = i.id;
    -- The name words are the document's lexemes of weight A (read from it, not parsed again).
    insert into search_lexicon (word)
    select distinct w
    from search_docs d
    cross join lateral unnest(tsvector_to_array(ts_filter(d.document, '{a}'))) as w
    where d.tool_id in (select tool_id from capture_ids)
      and length(w) between 3 and 60 and w ~ '[[:alpha:]]'
      and not exists (select 1 from search_lexicon l where l.word = w)
    on conflict do nothing;
end $$;

-- Compare the catalogue tools in capture_ids with their snapshot; record the differences in
-- catalogue_changes at *gen* and bring the snapshot and the search index up to date.
create or replace function catalogue_diff(gen bigint) returns void language plpgsql as $$
declare
    large boolean := (select count(*) from capture_ids) >= 500;
begin
    -- After a large publish the planner must see the new rows, or it plans the joins below
    -- for the handful of rows it last saw.
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

    -- Where the records of each old tool are now: the new tools holding them, and whether
    -- those hold exactly the same records and are not themselves old tools.
    create temporary table if not exists capture_dest (
        tool_id text primary key, dest text[], same_members boolean) on commit drop;
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

    delete from catalogue_snapshot where tool_id in (select tool_id from capture_ids);
    insert into catalogue_snapshot select * from capture_new;
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
begin
    create temporary table if not exists capture_ids (tool_id text primary key) on commit drop;
    truncate capture_ids;
    create temporary table if not exists capture_records (upstream_tool_id bigint primary key)
        on commit drop;
    truncate capture_records;
    insert into capture_records
    select upstream_tool_id from catalogue_touched where upstream_tool_id is not null
    union
    select v.upstream_tool_id from upstream_versions v
    where v.id in (select upstream_version_id from catalogue_touched
                   where upstream_version_id is not null);
    get diagnostics records = row_count;
    if records >= 500 then
        analyze capture_records;
    end if;
    insert into capture_ids
    select tool_id from catalogue_touched where tool_id is not null
    union
    select m.tool_id from catalogue_members m join capture_records r using (upstream_tool_id)
    on conflict do nothing;
    -- The tools that held those records when last described. A few records are looked up in
    -- the snapshot's index; many, by one pass over it (an overlap test of two long arrays
    -- compares every element with every other).
    if records between 1 and 999 then
        insert into capture_ids
        select s.tool_id from catalogue_snapshot s
        where s.member_ids && array(select upstream_tool_id from capture_records)
        on conflict do nothing;
    elsif records >= 1000 then
        insert into capture_ids
        select distinct s.tool_id
        from catalogue_snapshot s cross join lateral unnest(s.member_ids) as r(upstream_tool_id)
        where r.upstream_tool_id in (select upstream_tool_id from capture_records)
        on conflict do nothing;
    end if;
    delete from catalogue_touched;
    perform catalogue_diff(new.generation);
    return null;
end $$;

-- A whole catalogue's worth of rows is sorted and hashed at once: in memory, not on disk. And
-- the statements are planned at a cost that turns on JIT compilation, which takes longer than
-- running them (seconds a statement, with inlining and optimisation).
alter function catalogue_capture() set work_mem = '64MB';
alter function catalogue_capture() set jit = off;
