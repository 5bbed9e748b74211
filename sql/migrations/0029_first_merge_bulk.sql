-- 0029_first_merge_bulk.sql
-- Purpose: a merge into an empty catalogue (a full merge, the first after the catalogue is
--          created or emptied) writes every catalogue row afresh; what the catalogue's touch
--          records, the id history's unique checks and the evidence's indexes cost row by row
--          is spent for nothing there. At 1,000,000 records (pg_stat_statements, every
--          statement tracked): 1,134,200 tool touches and 1,000,000 member touches inserted
--          by the triggers, then deleted and made distinct by the capture (4.8 s); 1,000,000
--          id-history rows inserted through two indexes (6.3 s).
--
--          - The merge sets aggregator.capture_all (for its transaction) before writing into
--            an empty catalogue: the touch triggers of the catalogue's tables record nothing,
--            and the capture at the generation bump describes every tool of the catalogue and
--            of the snapshot instead of the tools touched (the same tools: every one was
--            written). It puts the setting back.
--          - merge_save_history(): the staged id history is saved, into an empty history, by
--            one insert into the table without its indexes, built afterwards.
--          What the capture records is unchanged.
-- Created: 2026-12-02

create or replace function catalogue_touch_tools() returns trigger language plpgsql as $$
begin
    if coalesce(current_setting('aggregator.capture_all', true), '') = 'on' then
        return null;
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into catalogue_touched (tool_id) select distinct id from new_rows;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        insert into catalogue_touched (tool_id) select distinct id from old_rows;
    end if;
    return null;
end $$;

create or replace function catalogue_touch_by_tool_id() returns trigger language plpgsql as $$
begin
    if coalesce(current_setting('aggregator.capture_all', true), '') = 'on' then
        return null;
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into catalogue_touched (tool_id) select distinct tool_id from new_rows;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        insert into catalogue_touched (tool_id) select distinct tool_id from old_rows;
    end if;
    return null;
end $$;

create or replace function catalogue_touch_members() returns trigger language plpgsql as $$
begin
    if coalesce(current_setting('aggregator.capture_all', true), '') = 'on' then
        return null;
    end if;
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

-- Save the id history staged in merge_history_all (the ids each tool had, with its members),
-- and empty it. Into an empty history, many rows are inserted without the table's indexes,
-- which are built afterwards (the staged rows are distinct: one per tool and member).
set local check_function_bodies = off;
create or replace function merge_save_history() returns void language plpgsql as $$
declare
    indexes text[];
begin
    if (select count(*) from merge_history_all) >= 1000
       and not exists (select 1 from catalogue_id_history) then
        indexes := capture_drop_indexes('catalogue_id_history');
        insert into catalogue_id_history (id, upstream_tool_id, was_primary)
        select id, upstream_tool_id, was_primary from merge_history_all
        order by id, upstream_tool_id;
        perform capture_build_indexes(indexes);
    else
        insert into catalogue_id_history (id, upstream_tool_id, was_primary)
        select id, upstream_tool_id, was_primary from merge_history_all
        order by id, upstream_tool_id
        on conflict (id, upstream_tool_id) do nothing;
    end if;
    truncate merge_history_all;
end $$;
reset check_function_bodies;
alter function merge_save_history() set maintenance_work_mem = '256MB';

-- As in 0023 (at every generation bump, the catalogue tools touched since the last one,
-- directly or through their upstream records, are compared with their snapshot), and after a
-- merge into an empty catalogue, every tool.
create or replace function catalogue_capture() returns trigger language plpgsql as $$
declare
    records bigint;
    pages bigint;
begin
    -- The work tables have no index: each is read whole, or probed from the catalogue's side,
    -- and one index more per row written is a quarter of what a large capture costs.
    create temporary table if not exists capture_ids (tool_id text) on commit drop;
    truncate capture_ids;
    -- A merge into an empty catalogue recorded no touches (aggregator.capture_all): every
    -- tool of the catalogue, and of the snapshot, is described. The touches others recorded
    -- before (upstream records written in this publish) name nothing more.
    if coalesce(current_setting('aggregator.capture_all', true), '') = 'on' then
        perform set_config('aggregator.capture_all', 'off', true);
        delete from catalogue_touched;
        insert into capture_ids
        select id from catalogue_tools
        union
        select tool_id from catalogue_snapshot;
        perform catalogue_diff(new.generation);
        return null;
    end if;
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

-- As in 0023 (create or replace drops a function's settings).
alter function catalogue_capture() set work_mem = '64MB';
alter function catalogue_capture() set jit = off;
alter function catalogue_capture() set random_page_cost = 1.1;
alter function catalogue_capture() set maintenance_work_mem = '256MB';
-- Aggregates read rows in the order a subquery gives them (capture_parts): no parallel plan.
alter function catalogue_capture() set max_parallel_workers_per_gather = 0;

-- An index built after a bulk load (the capture's, the id history's, the full merge's
-- evidence) is built with the memory the capture gives it, whoever calls.
alter function capture_build_indexes(text[]) set maintenance_work_mem = '256MB';
