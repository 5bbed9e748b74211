#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: Workflow

label: Single-cell count matrix QC
doc: |
  Filters a 10x-style gene-by-cell count matrix: cells with too few detected
  genes or too large a mitochondrial fraction are removed, then per-cell QC
  metrics are written next to the filtered matrix.

inputs:
  counts:
    type: File
    doc: Count matrix in Matrix Market format with barcodes and features alongside.
    secondaryFiles:
      - pattern: ^^.barcodes.tsv.gz
      - pattern: ^^.features.tsv.gz
  min_genes:
    type: int
    default: 200
  max_mito_fraction:
    type: float
    default: 0.2

outputs:
  filtered_counts:
    type: File
    outputSource: filter/filtered_counts
  qc_metrics:
    type: File
    outputSource: filter/qc_metrics

steps:
  filter:
    run: steps/filter_cells.cwl
    in:
      counts: counts
      min_genes: min_genes
      max_mito_fraction: max_mito_fraction
    out: [filtered_counts, qc_metrics]
