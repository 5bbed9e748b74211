-- Files fetched from hosts other than the upstream's own (Zenodo, raw GitHub …): per run, how
-- each such host fared, so an operator sees "zenodo.org: 390 files failed" at a glance.
alter table harvest_runs add column file_hosts jsonb not null default '{}';

-- Fields an upstream sends on a file beyond TRS's (Dockstore's dockstore_absolute_path and
-- dockstore_self_url …): {"wrapper": {…FileWrapper extras}, "tool_file": {…ToolFile extras}}.
alter table staged_files add column extra jsonb;
alter table upstream_files add column extra jsonb;
