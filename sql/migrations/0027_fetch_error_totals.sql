-- 0027_fetch_error_totals.sql
-- Purpose: the fetch-error counters of /metrics read each upstream's running totals instead of
--          summing the fetch errors of every harvest run ever made at every scrape. The totals
--          are kept by a trigger on harvest_runs in the transaction that records a run's
--          conformance figures (the one that records its end), so they always equal the sum
--          over the runs, and are filled here from the runs already recorded.
-- Created: 2026-12-02

-- Per upstream and kind of error, the fetch errors its runs recorded (conformance ->
-- 'fetch_errors'), added up.
create table upstream_fetch_errors (
    upstream_id integer not null constraint upstream_fetch_errors_upstream_id_fkey
        references upstreams (id) on delete cascade,
    kind text not null,
    errors bigint not null,
    constraint upstream_fetch_errors_pkey primary key (upstream_id, kind)
);

-- Add a run's fetch errors (new row) and take away what it had (old row). A run deleted goes
-- only with its upstream, whose totals go too (cascade, in either order): its errors are taken
-- away from totals still there, never written anew.
create function upstream_fetch_errors_count() returns trigger language plpgsql as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        update upstream_fetch_errors t set errors = t.errors - e.value::bigint
        from jsonb_each_text(old.conformance -> 'fetch_errors') e
        where t.upstream_id = old.upstream_id and t.kind = e.key;
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into upstream_fetch_errors as t (upstream_id, kind, errors)
        select new.upstream_id, e.key, e.value::bigint
        from jsonb_each_text(new.conformance -> 'fetch_errors') e
        on conflict on constraint upstream_fetch_errors_pkey
        do update set errors = t.errors + excluded.errors;
    end if;
    return null;
end $$;

create trigger harvest_runs_fetch_errors_ins after insert on harvest_runs
    for each row when (new.conformance ? 'fetch_errors')
    execute function upstream_fetch_errors_count();
create trigger harvest_runs_fetch_errors_upd after update of conformance, upstream_id
    on harvest_runs
    for each row when (old.conformance -> 'fetch_errors' is distinct from
                       new.conformance -> 'fetch_errors'
                       or old.upstream_id <> new.upstream_id)
    execute function upstream_fetch_errors_count();
create trigger harvest_runs_fetch_errors_del after delete on harvest_runs
    for each row when (old.conformance ? 'fetch_errors')
    execute function upstream_fetch_errors_count();

insert into upstream_fetch_errors (upstream_id, kind, errors)
select r.upstream_id, e.key, sum(e.value::bigint)
from harvest_runs r, jsonb_each_text(r.conformance -> 'fetch_errors') e
group by 1, 2;
