process BRACKEN {
    tag "${sample_id}"
    container 'quay.io/biocontainers/bracken:2.9--py39h1f90b4d_0'

    input:
    tuple val(sample_id), path(report)
    path db
    val read_length
    val level

    output:
    tuple val(sample_id), path("${sample_id}.bracken.tsv"), emit: abundances

    script:
    """
    bracken -d ${db} -i ${report} -r ${read_length} -l ${level} -o ${sample_id}.bracken.tsv
    """
}
