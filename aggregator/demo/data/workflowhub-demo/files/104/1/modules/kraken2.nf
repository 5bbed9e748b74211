process KRAKEN2 {
    tag "${sample_id}"
    container 'quay.io/biocontainers/kraken2:2.1.3--pl5321hdcf5f25_0'
    cpus 8
    memory '32 GB'

    input:
    tuple val(sample_id), path(reads)
    path db

    output:
    tuple val(sample_id), path("${sample_id}.kraken2.report"), emit: report

    script:
    """
    kraken2 --db ${db} --threads ${task.cpus} --paired --gzip-compressed \\
        --confidence ${params.confidence} \\
        --report ${sample_id}.kraken2.report --output /dev/null ${reads}
    """
}
