#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool

label: samtools sort
doc: Sorts alignments by reference coordinate and writes BAM.

hints:
  - class: DockerRequirement
    dockerPull: quay.io/biocontainers/samtools:1.19.2--h50ea8bc_1

baseCommand: [samtools, sort]

arguments:
  - prefix: -o
    valueFrom: $(inputs.alignment.nameroot).sorted.bam
  - prefix: -O
    valueFrom: BAM

inputs:
  alignment:
    type: File
    inputBinding:
      position: 1
  threads:
    type: int
    default: 1
    inputBinding:
      prefix: -@

outputs:
  sorted_bam:
    type: File
    outputBinding:
      glob: $(inputs.alignment.nameroot).sorted.bam
