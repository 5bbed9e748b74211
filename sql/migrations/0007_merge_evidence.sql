-- 0007_merge_evidence.sql
-- Purpose: identity evidence of the stronger merge: kinds of key by strength, descriptor
--          content compared after line-ending/trailing-whitespace normalisation (a second
--          checksum beside the exact one, which stays what is served), and the operator's
--          always/never rules.
-- Created: 2026-12-01

-- The checksum of a file's text with LF line endings, no trailing whitespace and one final
-- newline, and how many distinct names it uses beyond its language's keywords (0: not a
-- workflow document). Null until the merge first reads the file as a primary descriptor.
alter table file_contents
    add column normalised_sha256 text
        constraint file_contents_normalised_sha256_check
        check (normalised_sha256 ~ '^[0-9a-f]{64}$'),
    add column information integer;

-- Evidence is recomputed under the new kinds: every record is re-merged at the next publish.
alter table tool_evidence drop constraint tool_evidence_kind_check;
delete from tool_evidence;
alter table tool_evidence add constraint tool_evidence_kind_check check (
    kind in ('uuid', 'trs', 'doi', 'repo', 'biotools', 'content', 'xref', 'alias', 'word', 'cite'));
update upstream_tools set merge_dirty = true;

-- The operator's rules ([merge] always / never in the config), by qualified id, a < b.
create table merge_rules (
    rule text not null constraint merge_rules_rule_check check (rule in ('always', 'never')),
    a text not null,
    b text not null,
    constraint merge_rules_pkey primary key (rule, a, b)
);
