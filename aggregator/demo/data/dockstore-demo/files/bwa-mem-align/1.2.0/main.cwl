#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: Workflow

label: BWA-MEM alignment with coordinate sorting
doc: |
  Aligns one paired-end sequencing library against an indexed reference genome
  with BWA-MEM, tags every read with a read group, and sorts the alignments by
  coordinate with samtools. The read group is described once, as a record type
  shared with the alignment step.

requirements:
  - $import: types/read_group.yml

inputs:
  reference:
    type: File
    doc: Reference FASTA indexed with `bwa index`.
    secondaryFiles: [.amb, .ann, .bwt, .pac, .sa]
  reads_1:
    type: File
    doc: Forward reads (FASTQ, optionally gzipped).
  reads_2:
    type: File
    doc: Reverse reads (FASTQ, optionally gzipped).
  read_group:
    type: types/read_group.yml#ReadGroup
    doc: Read group written into the @RG header line.
  threads:
    type: int
    default: 4

outputs:
  sorted_bam:
    type: File
    outputSource: sort/sorted_bam

steps:
  align:
    run: tools/bwa_mem.cwl
    in:
      reference: reference
      reads_1: reads_1
      reads_2: reads_2
      read_group: read_group
      threads: threads
    out: [alignment]

  sort:
    run: tools/samtools_sort.cwl
    in:
      alignment: align/alignment
      threads: threads
    out: [sorted_bam]
