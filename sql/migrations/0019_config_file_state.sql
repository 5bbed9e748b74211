-- 0019_config_file_state.sql
-- Purpose: remember what the configuration file last said of each upstream, so that a command
--          starting with an unchanged file leaves alone a change made through the admin API
--          (upstreams.source = 'api'), while an edited entry in the file still wins.
-- Created: 2026-12-01

alter table upstreams
    -- The file's [[upstreams]] table as last written from the file (null: never written from
    -- the file, or written before this migration).
    add column file_config jsonb;

