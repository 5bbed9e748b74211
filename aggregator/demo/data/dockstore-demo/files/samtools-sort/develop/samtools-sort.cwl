#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
id: samtools-sort

label: samtools sort
doc: |
  Sorts a SAM, BAM or CRAM file by reference coordinate (or by read name with
  `by_name`) and writes a BAM file together with its CSI index.

requirements:
  - class: DockerRequirement
    dockerPull: quay.io/demo-lab/samtools-sort:develop
  - class: ResourceRequirement
    coresMin: $(inputs.threads)
    ramMin: $(inputs.memory_per_thread_mb * inputs.threads)

baseCommand: [samtools, sort]

arguments:
  - prefix: -o
    valueFrom: $(inputs.output_name)##idx##$(inputs.output_name).csi
  - --write-index
  - prefix: -m
    valueFrom: $(inputs.memory_per_thread_mb)M

inputs:
  alignments:
    type: File
    doc: Alignments to sort.
    inputBinding:
      position: 1
  output_name:
    type: string
    default: sorted.bam
  by_name:
    type: boolean
    default: false
    inputBinding:
      prefix: -n
  threads:
    type: int
    default: 2
    inputBinding:
      prefix: -@
  memory_per_thread_mb:
    type: int
    default: 768
  compression_level:
    type: int?
    doc: BAM compression level, 0 (none) to 9 (best).
    inputBinding:
      prefix: -l

outputs:
  sorted:
    type: File
    secondaryFiles: [.csi]
    outputBinding:
      glob: $(inputs.output_name)

s:license: https://spdx.org/licenses/MIT

$namespaces:
  s: https://schema.org/
