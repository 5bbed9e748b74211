#!/usr/bin/env nextflow
/*
 * Entry point: validates parameters and runs the RNASEQ workflow.
 */
nextflow.enable.dsl = 2

include { RNASEQ } from './workflows/rnaseq'

workflow {
    if (!params.input) {
        error "Please provide a samplesheet with --input"
    }
    if (!params.salmon_index) {
        error "Please provide a Salmon index with --salmon_index"
    }
    RNASEQ(params.input, params.salmon_index)
}
