-- 0003_harvest_sync.sql
-- Purpose: what scheduled, incremental and fault-tolerant harvesting keeps: each upstream's
--          health (circuit breaker) and next due harvest, why each run started and which
--          worker ran it, "harvest now" requests, listing hashes per tool and the validators
--          of listing pages for conditional requests.
-- Created: 2026-11-23

alter table upstreams
    add column enabled boolean not null default true,
    -- When the next scheduled harvest is due; a worker whose tick comes earlier skips it
    -- (another worker already harvested that tick). Null: due now.
    add column next_harvest_at timestamptz,
    add column consecutive_failures integer not null default 0,
    -- While in the future, scheduled harvests are skipped; the first one after it is the probe.
    add column circuit_open_until timestamptz;

alter table harvest_runs
    add column trigger text not null default 'manual' constraint harvest_runs_trigger_check
        check (trigger in ('manual', 'scheduled', 'requested')),
    add column worker text,
    -- Tools whose versions and files were fetched (the others were unchanged in the listing).
    add column tools_fetched integer not null default 0,
    -- Responses answered 304 Not Modified to a conditional request.
    add column not_modified integer not null default 0;

-- The listing entry a tool's details were last fetched for, and when: a tool whose entry is
-- unchanged is confirmed without fetching its versions and files again, until
-- harvest.revalidate_after has passed.
alter table upstream_tools
    add column listing_hash text,
    add column details_fetched_at timestamptz;

-- Null: fetch this tool's details again on the next run (some of them failed).
alter table staged_tools add column listing_hash text;

-- The validators and contents of the listing pages of each upstream's last published run: a
-- page answered 304 is replayed from here.
create table listing_pages (
    upstream_id integer not null
        constraint listing_pages_upstream_id_fkey references upstreams (id) on delete cascade,
    url text not null,
    etag text,
    last_modified text,
    next_page text,
    tool_ids text[] not null,
    listing_hashes text[] not null,
    fetched_at timestamptz not null default now(),
    constraint listing_pages_pkey primary key (upstream_id, url)
);

-- "Harvest now": a request is served by the first run of its upstream that starts after it.
create table harvest_requests (
    id bigint generated always as identity primary key,
    upstream_id integer not null
        constraint harvest_requests_upstream_id_fkey references upstreams (id) on delete cascade,
    requested_at timestamptz not null default now(),
    requested_by text not null default '',
    run_id bigint constraint harvest_requests_run_id_fkey
        references harvest_runs (id) on delete set null,
    served_at timestamptz
);
create index harvest_requests_pending_idx on harvest_requests (upstream_id) where served_at is null;
