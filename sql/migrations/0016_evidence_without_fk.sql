-- 0016_evidence_without_fk.sql
-- Purpose: the merge writes the evidence of every record it recomputes (a million rows in a
--          full merge) without a foreign-key check per row: it writes evidence only for the
--          records it has just read, in the same transaction. What the key also did on
--          delete — a deleted upstream record takes its evidence with it — the statement
--          trigger of migration 0008 now does as well.
-- Created: 2026-12-01

alter table tool_evidence drop constraint tool_evidence_upstream_tool_id_fkey;

create or replace function upstream_tools_deleted() returns trigger
language plpgsql as $$
begin
    delete from catalogue_tools c using gone g where c.primary_member_id = g.id;
    delete from catalogue_members m using gone g where m.upstream_tool_id = g.id;
    delete from catalogue_id_history h using gone g where h.upstream_tool_id = g.id;
    delete from tool_evidence e using gone g where e.upstream_tool_id = g.id;
    return null;
end
$$;
