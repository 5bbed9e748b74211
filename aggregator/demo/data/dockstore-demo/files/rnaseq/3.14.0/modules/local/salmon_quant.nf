process SALMON_QUANT {
    tag "${meta.id}"
    label 'process_high'
    container 'quay.io/biocontainers/salmon:1.10.3--h6dccd9a_2'
    publishDir "${params.outdir}/salmon", mode: 'copy'

    input:
    tuple val(meta), path(reads)
    path index
    val lib_type

    output:
    tuple val(meta), path("${meta.id}"), emit: results

    script:
    def strandedness = meta.strandedness == 'forward' ? 'ISF' :
                       meta.strandedness == 'reverse' ? 'ISR' : lib_type
    """
    salmon quant \\
        --threads ${task.cpus} \\
        --libType ${strandedness} \\
        --index ${index} \\
        --mates1 ${reads[0]} \\
        --mates2 ${reads[1]} \\
        --validateMappings \\
        --output ${meta.id}
    """
}
