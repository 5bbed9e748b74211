process MERGE_ABUNDANCES {
    container 'quay.io/biocontainers/bracken:2.9--py39h1f90b4d_0'
    publishDir params.outdir, mode: 'copy'

    input:
    path tables

    output:
    path 'abundances.merged.tsv'

    script:
    """
    combine_bracken_outputs.py --files ${tables} --output abundances.merged.tsv
    """
}
