-- 0025_facet_groups_and_run_indexes.sql
-- Purpose: searches without words (the console's home page, filters alone, the search API
--          with filters only) answer without reading the search index. Their totals and facet
--          counts are sums over search_facet_groups: the catalogue's tools counted by the
--          values every facet and filter reads, kept exact by triggers on search_docs in the
--          publishing transaction (whatever statement of the capture writes the search rows).
--          Their page of tools is read in order from an index.
--          The harvest runs table keeps every run ever made: the runs still running, an
--          upstream's runs with conformance findings, by status, and finished each have an
--          index, so that the reads made at every worker poll, every listing of the upstreams
--          and every metrics scrape no longer grow with the history.
-- Created: 2026-12-02

-- The search rows counted by everything a search without words filters on or counts: one row
-- per combination present in the catalogue (a few per organisation), with how many tools have
-- it. A row whose count falls to zero is removed.
create table search_facet_groups (
    upstreams text[] not null,
    descriptor_types text[] not null,
    toolclass text,
    organization text not null,
    toolclasses text[] not null,
    organizations text[] not null,
    has_checker boolean not null,
    tools bigint not null,
    constraint search_facet_groups_key unique nulls not distinct (
        upstreams, descriptor_types, toolclass, organization, toolclasses, organizations,
        has_checker)
);
create index search_facet_groups_empty_idx on search_facet_groups (tools) where tools <= 0;
-- A filter on an organisation picks a few groups among many (the console reads the primary
-- record's, the API any record's).
create index search_facet_groups_organization_idx on search_facet_groups (lower(organization));
create index search_facet_groups_organizations_idx on search_facet_groups using gin (organizations);

-- Add the search rows of new_rows and take away those of old_rows (each present only for the
-- statements that have it: an insert has no old rows, a delete no new ones).
create function search_facet_groups_count() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        insert into search_facet_groups as g
        select upstreams, descriptor_types, toolclass, organization, toolclasses,
               organizations, has_checker, count(*)
        from new_rows group by 1, 2, 3, 4, 5, 6, 7
        on conflict on constraint search_facet_groups_key
        do update set tools = g.tools + excluded.tools;
    elsif tg_op = 'DELETE' then
        insert into search_facet_groups as g
        select upstreams, descriptor_types, toolclass, organization, toolclasses,
               organizations, has_checker, -count(*)
        from old_rows group by 1, 2, 3, 4, 5, 6, 7
        on conflict on constraint search_facet_groups_key
        do update set tools = g.tools + excluded.tools;
    else
        insert into search_facet_groups as g
        select upstreams, descriptor_types, toolclass, organization, toolclasses,
               organizations, has_checker, sum(n)
        from (select upstreams, descriptor_types, toolclass, organization, toolclasses,
                     organizations, has_checker, 1 as n from new_rows
              union all
              select upstreams, descriptor_types, toolclass, organization, toolclasses,
                     organizations, has_checker, -1 from old_rows) as c
        group by 1, 2, 3, 4, 5, 6, 7
        on conflict on constraint search_facet_groups_key
        do update set tools = g.tools + excluded.tools;
    end if;
    delete from search_facet_groups where tools <= 0;
    return null;
end $$;

create function search_facet_groups_clear() returns trigger language plpgsql as $$
begin
    truncate search_facet_groups;
    return null;
end $$;

create trigger search_docs_facets_ins after insert on search_docs
    referencing new table as new_rows
    for each statement execute function search_facet_groups_count();
create trigger search_docs_facets_upd after update on search_docs
    referencing new table as new_rows old table as old_rows
    for each statement execute function search_facet_groups_count();
create trigger search_docs_facets_del after delete on search_docs
    referencing old table as old_rows
    for each statement execute function search_facet_groups_count();
create trigger search_docs_facets_truncate after truncate on search_docs
    for each statement execute function search_facet_groups_clear();

insert into search_facet_groups
select upstreams, descriptor_types, toolclass, organization, toolclasses, organizations,
       has_checker, count(*)
from search_docs group by 1, 2, 3, 4, 5, 6, 7;

-- The page of a search without words, in the order it is shown: the console's (by sort key,
-- and by sort key within an organisation, or among the tools of two registries or more); the
-- API's is the primary key's order, and its organisation filter reads organizations.
create index search_docs_sort_key_idx on search_docs (sort_key);
create index search_docs_organization_idx on search_docs (lower(organization), sort_key);
create index search_docs_multi_idx on search_docs (sort_key) where cardinality(upstreams) >= 2;
create index search_docs_organizations_idx on search_docs using gin (organizations);

-- Runs still recorded as running: a handful, among every run ever made (workers look for them
-- at every poll).
create index harvest_runs_running_idx on harvest_runs (upstream_id, id desc)
    where status = 'running';
-- An upstream's last runs with conformance findings (the upstreams' list): an upstream that
-- conforms has none, and without this its whole history was read to find that out.
create index harvest_runs_conformance_idx on harvest_runs (upstream_id, id desc)
    where conformance <> '{}';
-- An upstream's runs by status: counted from the index alone (its console page), and its last
-- success found at the end of its succeeded and partial runs (the upstreams' list).
create index harvest_runs_upstream_id_status_idx on harvest_runs (upstream_id, status, id);
-- An upstream's last finished run (the metrics).
create index harvest_runs_finished_idx on harvest_runs (upstream_id, id)
    where finished_at is not null;
