#!/usr/bin/env nextflow
/*
 * Taxonomic profiling of shotgun metagenomes: host-free reads are classified
 * with Kraken2, abundances re-estimated with Bracken and merged into one table.
 */
nextflow.enable.dsl = 2

include { KRAKEN2 } from './modules/kraken2'
include { BRACKEN } from './modules/bracken'
include { MERGE_ABUNDANCES } from './modules/merge'

workflow {
    ch_reads = Channel.fromFilePairs(params.reads, checkIfExists: true)
    db = file(params.kraken2_db, checkIfExists: true)

    KRAKEN2(ch_reads, db)
    BRACKEN(KRAKEN2.out.report, db, params.read_length, params.taxonomic_level)
    MERGE_ABUNDANCES(BRACKEN.out.abundances.map { id, tsv -> tsv }.collect())
}
