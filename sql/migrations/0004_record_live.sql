-- 0004_record_live.sql
-- Purpose: the one definition of "an upstream record is live": it has been missing from fewer
--          than tombstone_after consecutive complete listings (harvest.tombstone_after, a
--          setting, so it is an argument). Queries call it instead of repeating the comparison;
--          a simple immutable SQL function, so the planner inlines it.
-- Created: 2026-12-01

create function upstream_tool_live(missed_listings integer, tombstone_after integer)
    returns boolean
    language sql immutable parallel safe
    as $$ select missed_listings < tombstone_after $$;
