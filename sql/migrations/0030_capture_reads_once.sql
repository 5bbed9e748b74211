-- 0030_capture_reads_once.sql
-- Purpose: the capture at the generation bump (migrations 0010, 0011, 0014, 0020, 0023) reads
--          the catalogue less for each tool of an incremental publish. What it produces is
--          unchanged: the same feed entries and digests, snapshot, search rows and lexicon.
--
--          - The members of the tools described are read once, when they are listed
--            (capture_tools keeps them): the records of a tool of several records are read
--            from that list, not looked up again by tool, and its primary record's document is
--            taken from those records instead of being looked up once more.
--          - Where the records of an old tool went is found among the members just listed,
--            joined by hash, instead of by a probe of catalogue_members per record (20,224
--            probes at the merge benchmark's 1% change of 1,000,000 records).
--          - The name words of the search rows replaced are in the lexicon already: only the
--            words of the new rows that were not in the rows they replace are looked up (26,862
--            index probes in that change, for one new word).
--          At 1,000,000 records and that change, the capture of the frozen catalogue
--          (bench/capture_freeze.py) took 2.14-2.34 s against 2.52-3.05 s before, alternating.
--          - The work tables are analysed on the columns the statements join on and filter by,
--            not on their long texts and arrays (100-140 ms of that capture).
-- Created: 2026-12-02

-- As in 0023, the records of a tool of several records read from the members capture_tools
-- lists (the catalogue's, read when the tools were listed), and its primary record's document
-- taken among them (looked up only if the primary is not among its records).
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
               (array_agg(t.doc) filter (where t.id = i.primary_member_id))[1] as primary_doc,
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
        cross join lateral unnest(i.members) as m(upstream_tool_id)
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

-- As in 0023, with the members of each tool listed once (capture_tools.members), and where
-- the records of an old tool went found among them, by hash.
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
    -- The tools still in the catalogue, their members (read here once), and whether each is a
    -- tool of one record (its primary record and no other): its digests and search row are
    -- computed from that record alone.
    create temporary table if not exists capture_tools (
        id text, sort_key text collate "C", primary_member_id bigint, single boolean,
        members bigint[]) on commit drop;
    truncate capture_tools;
    insert into capture_tools
    select c.id, c.sort_key, c.primary_member_id,
           coalesce(cardinality(k.members) = 1 and k.members[1] = c.primary_member_id, false),
           coalesce(k.members, '{}')
    from capture_ids i
    join catalogue_tools c on c.id = i.tool_id
    left join (select m.tool_id, array_agg(m.upstream_tool_id order by m.upstream_tool_id)
                   as members
               from catalogue_members m
               where m.tool_id in (select tool_id from capture_ids)
               group by m.tool_id) k on k.tool_id = c.id;
    if large then
        analyze capture_tools (id, single);
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
        -- Their ids are what the statements below join on: analysing the other columns (long
        -- texts, arrays) cost 100-140 ms of the capture at the 1% change of 1,000,000 records.
        analyze capture_new (tool_id);
        analyze capture_old (tool_id);
    end if;

    -- Where the records of each old tool whose records changed are now: the new tools holding
    -- them, and whether those hold exactly the same records and are not themselves old tools.
    -- A record is held by one tool at most, so the members listed in capture_tools are all
    -- the catalogue says of the tools in capture_new. (Every old tool is joined and those
    -- that kept their records dropped after: the planner, which thinks a filter on both the
    -- id and the records leaves one old tool, otherwise loops over capture_old for each.)
    create temporary table if not exists capture_dest (
        tool_id text, dest text[], same_members boolean) on commit drop;
    truncate capture_dest;
    insert into capture_dest
    select o.tool_id,
           array_agg(distinct m.tool_id order by m.tool_id),
           bool_and(n.member_ids = o.member_ids and o2.tool_id is null)
    from capture_old o
    cross join lateral unnest(o.member_ids) as r(upstream_tool_id)
    join (select c.id as tool_id, x.upstream_tool_id
          from capture_tools c cross join lateral unnest(c.members) as x(upstream_tool_id)) m
        on m.upstream_tool_id = r.upstream_tool_id
    join capture_new n on n.tool_id = m.tool_id
    left join capture_old o2 on o2.tool_id = m.tool_id
    group by o.tool_id
    having not bool_or(m.tool_id = o.tool_id and n.member_ids = o.member_ids);

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

-- As in 0020, with only the name words that the rows replaced did not have looked up in the
-- lexicon.
create or replace function search_refresh() returns void language plpgsql as $$
declare
    tools bigint := (select count(*) from capture_ids);
    -- A first publish: the index is built after it is filled (and so is the lexicon).
    bulk boolean := tools >= 1000 and not exists (select 1 from search_docs);
    empty_lexicon boolean := not exists (select 1 from search_lexicon);
    bulk_words boolean := tools >= 1000 and empty_lexicon;
    indexes text[];
    word_indexes text[];
begin
    create temporary table if not exists capture_known_words (word text) on commit drop;
    truncate capture_known_words;
    if bulk then
        indexes := capture_drop_indexes('search_docs');
    elsif not empty_lexicon then
        -- The name words of the rows replaced are in the lexicon already (it takes those of
        -- every row written and loses none): kept, so that only the others are looked up.
        with gone as (
            delete from search_docs where tool_id in (select tool_id from capture_ids)
            returning document)
        insert into capture_known_words
        select distinct w from gone
        cross join lateral unnest(tsvector_to_array(ts_filter(gone.document, '{a}'))) as w;
    else
        delete from search_docs where tool_id in (select tool_id from capture_ids);
    end if;
    if bulk_words then
        word_indexes := capture_drop_indexes('search_lexicon');
    end if;
    -- The lexicon takes the name words of the rows written: the document's lexemes of weight A
    -- (read from it, not parsed again), each word looked up once, and not at all in an empty
    -- lexicon (without its index, a lookup would read the table).
    if empty_lexicon then
        insert into search_lexicon (word)
        select distinct w
        from search_write() as d(document)
        cross join lateral unnest(tsvector_to_array(ts_filter(d.document, '{a}'))) as w
        where length(w) between 3 and 60 and w ~ '[[:alpha:]]';
    else
        with words as (
            select w
            from search_write() as d(document)
            cross join lateral unnest(tsvector_to_array(ts_filter(d.document, '{a}'))) as w
            where length(w) between 3 and 60 and w ~ '[[:alpha:]]'
            except
            select word from capture_known_words)
        insert into search_lexicon (word)
        select w from words
        where not exists (select 1 from search_lexicon l where l.word = words.w)
        on conflict do nothing;
    end if;
    if bulk then
        perform capture_build_indexes(indexes);
    end if;
    if bulk_words then
        perform capture_build_indexes(word_indexes);
    end if;
end $$;
