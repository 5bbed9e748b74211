-- 0009_operations.sql
-- Purpose: what operating the mirror keeps: each upstream's applied configuration, whether it
--          is paused or removed, the conformance figures of every run, requests to cancel a
--          running harvest, admin API tokens (hashes only) and the audit log of admin actions.
-- Created: 2026-12-01

alter table upstreams
    -- The whole [[upstreams]] table as last applied (null: rows written before this migration;
    -- their columns say what is known).
    add column config jsonb,
    -- Paused: scheduled harvests are skipped until resumed ("harvest now" still runs).
    add column paused boolean not null default false,
    add column paused_at timestamptz,
    add column paused_by text,
    -- Removed from the configuration: never harvested, its records tombstoned (kept, and
    -- served again if the upstream is added back).
    add column removed_at timestamptz;

alter table harvest_runs
    -- What the run found wrong with the upstream: violations, conversions, dropped fields,
    -- checksum mismatches, paging anomalies, fetch errors by kind.
    add column conformance jsonb not null default '{}',
    add column cancel_requested_at timestamptz,
    add column cancel_requested_by text;

create table api_tokens (
    id integer generated always as identity primary key,
    name text not null,
    role text not null constraint api_tokens_role_check check (role in ('admin', 'operator')),
    -- The token is "trsa_<lookup>_<secret>": the lookup finds the row, the sha256 of the whole
    -- token is compared in constant time. The token itself is never stored.
    lookup text not null constraint api_tokens_lookup_key unique,
    token_sha256 text not null,
    created_at timestamptz not null default now(),
    created_by text not null default '',
    last_used_at timestamptz,
    revoked_at timestamptz
);
create unique index api_tokens_name_live_idx on api_tokens (name) where revoked_at is null;

create table audit_log (
    id bigint generated always as identity primary key,
    at timestamptz not null default now(),
    -- A token's name ("token:<name>"), "cli:<user>@<host>", or "anonymous".
    actor text not null,
    role text,
    action text not null,
    target text,
    outcome text not null constraint audit_log_outcome_check
        check (outcome in ('ok', 'refused', 'failed')),
    status integer,
    detail jsonb not null default '{}'
);
create index audit_log_at_idx on audit_log (id desc);
