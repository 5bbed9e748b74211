-- 0001_create_catalogue.sql
-- Purpose: upstream registries, harvest runs, the upstream records they publish, content-
--          addressed file contents, per-run staging, and the published catalogue the API reads.
-- Created: 2026-11-22

create table upstreams (
    id integer generated always as identity primary key,
    name text not null constraint upstreams_name_key unique,
    url text not null,
    kind text not null,
    mode text not null,
    priority integer not null default 100,
    schedule text not null default 'every 6h',
    source text not null default 'config' constraint upstreams_source_check
        check (source in ('config', 'api')),
    service_info jsonb,
    tool_classes jsonb not null default '[]',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table harvest_runs (
    id bigint generated always as identity primary key,
    upstream_id integer not null
        constraint harvest_runs_upstream_id_fkey references upstreams (id) on delete cascade,
    status text not null default 'running' constraint harvest_runs_status_check
        check (status in ('running', 'succeeded', 'partial', 'failed', 'abandoned')),
    listing_complete boolean not null default false,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    tools_seen integer not null default 0,
    tools_new integer not null default 0,
    tools_changed integer not null default 0,
    tools_unchanged integer not null default 0,
    tools_tombstoned integer not null default 0,
    versions_seen integer not null default 0,
    files_stored integer not null default 0,
    requests integer not null default 0,
    bytes_fetched bigint not null default 0,
    errors integer not null default 0,
    error text,
    error_samples jsonb not null default '[]'
);
create index harvest_runs_upstream_id_id_idx on harvest_runs (upstream_id, id desc);

-- Every file's bytes, stored once per sha256.
create table file_contents (
    sha256 text primary key constraint file_contents_sha256_check check (sha256 ~ '^[0-9a-f]{64}$'),
    content bytea not null,
    size integer not null,
    created_at timestamptz not null default now()
);

-- The live records of each upstream, as last published.
create table upstream_tools (
    id bigint generated always as identity primary key,
    upstream_id integer not null
        constraint upstream_tools_upstream_id_fkey references upstreams (id) on delete cascade,
    external_id text not null,
    doc jsonb not null,
    doc_hash text not null,
    first_seen timestamptz not null default now(),
    last_confirmed timestamptz not null default now(),
    last_changed timestamptz not null default now(),
    last_run_id bigint,
    missed_listings integer not null default 0,
    tombstoned_at timestamptz,
    constraint upstream_tools_upstream_id_external_id_key unique (upstream_id, external_id)
);

create table upstream_versions (
    id bigint generated always as identity primary key,
    upstream_tool_id bigint not null
        constraint upstream_versions_upstream_tool_id_fkey
        references upstream_tools (id) on delete cascade,
    -- The segment that names the version in URLs: the last segment of its upstream url when
    -- that url ends in /versions/<segment>, else its id.
    key text not null,
    external_id text not null,
    position integer not null,
    doc jsonb not null,
    constraint upstream_versions_upstream_tool_id_key_key unique (upstream_tool_id, key)
);

create table upstream_files (
    upstream_version_id bigint not null
        constraint upstream_files_upstream_version_id_fkey
        references upstream_versions (id) on delete cascade,
    -- CWL, WDL, NFL, GALAXY, SMK (or another upstream type); '' for a type-independent
    -- containerfile.
    descriptor_type text not null,
    path text not null,
    file_type text not null,
    sha256 text constraint upstream_files_sha256_fkey references file_contents (sha256),
    declared_sha256 text,
    checksum_status text not null constraint upstream_files_checksum_status_check
        check (checksum_status in ('verified', 'mismatch', 'undeclared', 'not_fetched')),
    url text,
    constraint upstream_files_pkey primary key (upstream_version_id, descriptor_type, path)
);

-- What a harvest run has fetched so far; published atomically when the run ends well.
create unlogged table staged_tools (
    run_id bigint not null,
    external_id text not null,
    doc jsonb not null,
    doc_hash text not null,
    -- false: the tool was confirmed by the listing, its versions and files were not refetched
    -- (unchanged, or a fetch failed); publishing keeps what was there.
    detailed boolean not null,
    constraint staged_tools_pkey primary key (run_id, external_id)
);

create unlogged table staged_versions (
    run_id bigint not null,
    tool_external_id text not null,
    key text not null,
    external_id text not null,
    position integer not null,
    doc jsonb not null,
    constraint staged_versions_pkey primary key (run_id, tool_external_id, key)
);

create unlogged table staged_files (
    run_id bigint not null,
    tool_external_id text not null,
    version_key text not null,
    descriptor_type text not null,
    path text not null,
    file_type text not null,
    sha256 text,
    declared_sha256 text,
    checksum_status text not null,
    url text,
    constraint staged_files_pkey
        primary key (run_id, tool_external_id, version_key, descriptor_type, path)
);

-- The published catalogue: one row per tool the API serves, and the upstream records behind it.
create table catalogue_tools (
    id text primary key,
    primary_member_id bigint not null
        constraint catalogue_tools_primary_member_id_fkey
        references upstream_tools (id) on delete cascade
);

create table catalogue_members (
    upstream_tool_id bigint primary key
        constraint catalogue_members_upstream_tool_id_fkey
        references upstream_tools (id) on delete cascade,
    tool_id text not null
        constraint catalogue_members_tool_id_fkey
        references catalogue_tools (id) on delete cascade on update cascade
);
create index catalogue_members_tool_id_idx on catalogue_members (tool_id);

-- One row: the catalogue's generation, bumped by every publish (also the API's ETag seed).
create table catalogue_state (
    singleton boolean primary key default true constraint catalogue_state_singleton_check
        check (singleton),
    generation bigint not null default 0,
    published_at timestamptz not null default now()
);
insert into catalogue_state default values;
