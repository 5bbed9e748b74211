-- Files fetched from hosts other than the upstream's own (Zenodo, raw GitHub …): per run, how
-- each such host fared, so an operator sees "zenodo.org: 390 files failed" at a glance.
alter table harvest_runs add column file_hosts jsonb not null default '{}';
