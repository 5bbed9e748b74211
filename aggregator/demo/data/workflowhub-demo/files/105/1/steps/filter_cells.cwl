#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool

label: Filter cells by gene count and mitochondrial fraction

requirements:
  InitialWorkDirRequirement:
    listing:
      - entryname: filter_cells.R
        entry:
          $include: ../scripts/filter_cells.R
hints:
  DockerRequirement:
    dockerPull: ghcr.io/demo-lab/sc-qc:1.0

baseCommand: [Rscript, filter_cells.R]

inputs:
  counts:
    type: File
    secondaryFiles:
      - pattern: ^^.barcodes.tsv.gz
      - pattern: ^^.features.tsv.gz
    inputBinding:
      position: 1
  min_genes:
    type: int
    inputBinding:
      prefix: --min-genes
  max_mito_fraction:
    type: float
    inputBinding:
      prefix: --max-mito-fraction

outputs:
  filtered_counts:
    type: File
    outputBinding:
      glob: filtered.mtx.gz
  qc_metrics:
    type: File
    outputBinding:
      glob: qc_metrics.tsv
