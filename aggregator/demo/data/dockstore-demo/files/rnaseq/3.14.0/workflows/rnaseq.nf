/*
 * Read QC with FastQC and quantification with Salmon, one sample per samplesheet row.
 */
include { FASTQC       } from '../modules/local/fastqc'
include { SALMON_QUANT } from '../modules/local/salmon_quant'
include { MULTIQC      } from '../modules/local/multiqc'

workflow RNASEQ {
    take:
    samplesheet   // path to a CSV with columns sample,fastq_1,fastq_2,strandedness
    salmon_index  // path or URL of a Salmon index directory/archive

    main:
    ch_reads = Channel
        .fromPath(samplesheet, checkIfExists: true)
        .splitCsv(header: true)
        .map { row ->
            def meta = [id: row.sample, strandedness: row.strandedness ?: 'auto']
            tuple(meta, [file(row.fastq_1, checkIfExists: true), file(row.fastq_2, checkIfExists: true)])
        }

    ch_qc = Channel.empty()
    if (!params.skip_fastqc) {
        FASTQC(ch_reads)
        ch_qc = ch_qc.mix(FASTQC.out.zip.map { meta, zip -> zip })
    }

    SALMON_QUANT(ch_reads, file(salmon_index), params.lib_type)
    ch_qc = ch_qc.mix(SALMON_QUANT.out.results.map { meta, dir -> dir })

    MULTIQC(ch_qc.collect())

    emit:
    quant  = SALMON_QUANT.out.results
    report = MULTIQC.out.report
}
