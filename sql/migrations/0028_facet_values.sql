-- 0028_facet_values.sql
-- Purpose: a search without words and without filters (the console's home page, the search
--          API with neither text nor filters) reads its total and facet counts from
--          search_facet_values: the catalogue's tools counted per value of each facet (a few
--          hundred rows), instead of summing every facet group. The values are kept by the
--          facet triggers of migration 0025 (redefined here) in the same statement as the
--          groups, so they change with the generation that changed them; filtered searches
--          keep reading the groups.
-- Created: 2026-12-02

-- The tools of the catalogue counted per value of each facet. Facets are named after the
-- search rows' columns: upstreams, descriptor_types, toolclasses and organizations count a
-- tool once per element of its list (nulls are no value); toolclass and organization are the
-- primary record's (empty is no value); multi ('yes') counts the tools of two registries or
-- more, only (an upstream) those of that registry alone, has_checker ('true', 'false') every
-- tool, total ('') every tool. A row whose count falls to zero is removed.
create table search_facet_values (
    facet text not null,
    value text not null,
    tools bigint not null,
    constraint search_facet_values_pkey primary key (facet, value)
);
create index search_facet_values_empty_idx on search_facet_values (tools) where tools <= 0;

-- The (facet, value) pairs a search row (or a group of them) is counted under.
create function search_facet_values_of(
    upstreams text[], descriptor_types text[], toolclass text, organization text,
    toolclasses text[], organizations text[], has_checker boolean
) returns table (facet text, value text) language sql immutable parallel safe as $$
    select 'total', ''
    union all
    select 'upstreams', u from unnest(upstreams) u where u is not null
    union all
    select 'descriptor_types', t from unnest(descriptor_types) t where t is not null
    union all
    select 'toolclass', toolclass where toolclass <> ''
    union all
    select 'organization', organization where organization <> ''
    union all
    select 'toolclasses', c from unnest(toolclasses) c where c is not null
    union all
    select 'organizations', o from unnest(organizations) o where o is not null
    union all
    select 'multi', 'yes' where cardinality(upstreams) >= 2
    union all
    select 'only', upstreams[1] where cardinality(upstreams) = 1 and upstreams[1] is not null
    union all
    select 'has_checker', has_checker::text
$$;

-- Add the search rows of new_rows and take away those of old_rows (each present only for the
-- statements that have it: an insert has no old rows, a delete no new ones): to the groups,
-- and to the values through the groups changed (a few per organisation, not every row).
create or replace function search_facet_groups_count() returns trigger language plpgsql as $$
declare
    changed text := case tg_op
        when 'INSERT' then
            'select upstreams, descriptor_types, toolclass, organization, toolclasses,
                    organizations, has_checker, count(*) as n
             from new_rows group by 1, 2, 3, 4, 5, 6, 7'
        when 'DELETE' then
            'select upstreams, descriptor_types, toolclass, organization, toolclasses,
                    organizations, has_checker, -count(*) as n
             from old_rows group by 1, 2, 3, 4, 5, 6, 7'
        else
            'select upstreams, descriptor_types, toolclass, organization, toolclasses,
                    organizations, has_checker, sum(n) as n
             from (select upstreams, descriptor_types, toolclass, organization, toolclasses,
                          organizations, has_checker, 1 as n from new_rows
                   union all
                   select upstreams, descriptor_types, toolclass, organization, toolclasses,
                          organizations, has_checker, -1 from old_rows) as c
             group by 1, 2, 3, 4, 5, 6, 7 having sum(n) <> 0'
        end;
begin
    execute format($sql$
        with delta as materialized (%s),
        groups as (
            insert into search_facet_groups as g
            select * from delta
            on conflict on constraint search_facet_groups_key
            do update set tools = g.tools + excluded.tools)
        insert into search_facet_values as v
        select f.facet, f.value, sum(d.n)
        from delta d,
             search_facet_values_of(d.upstreams, d.descriptor_types, d.toolclass,
                                    d.organization, d.toolclasses, d.organizations,
                                    d.has_checker) f
        group by 1, 2 having sum(d.n) <> 0
        on conflict on constraint search_facet_values_pkey
        do update set tools = v.tools + excluded.tools
        $sql$, changed);
    delete from search_facet_groups where tools <= 0;
    delete from search_facet_values where tools <= 0;
    return null;
end $$;

create or replace function search_facet_groups_clear() returns trigger language plpgsql as $$
begin
    truncate search_facet_groups, search_facet_values;
    return null;
end $$;

insert into search_facet_values
select f.facet, f.value, sum(g.tools)
from search_facet_groups g,
     search_facet_values_of(g.upstreams, g.descriptor_types, g.toolclass, g.organization,
                            g.toolclasses, g.organizations, g.has_checker) f
group by 1, 2;
