process MULTIQC {
    label 'process_single'
    container 'quay.io/biocontainers/multiqc:1.21--pyhdfd78af_0'
    publishDir "${params.outdir}/multiqc", mode: 'copy'

    input:
    path qc_files

    output:
    path 'multiqc_report.html', emit: report

    script:
    """
    multiqc --force --filename multiqc_report.html .
    """
}
