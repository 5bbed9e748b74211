#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool

label: BWA-MEM paired-end alignment
doc: Aligns paired FASTQ files and writes unsorted SAM records to standard output.

requirements:
  - $import: ../types/read_group.yml
  - class: InlineJavascriptRequirement

hints:
  - class: DockerRequirement
    dockerPull: quay.io/biocontainers/bwa:0.7.18--he4a0461_1
  - class: ResourceRequirement
    coresMin: $(inputs.threads)
    ramMin: 8000

baseCommand: [bwa, mem]

arguments:
  - prefix: -t
    valueFrom: $(inputs.threads)
    position: 0
  - prefix: -R
    position: 0
    valueFrom: |
      ${
        var rg = inputs.read_group;
        return "@RG\\tID:" + rg.id + "\\tSM:" + rg.sample +
               "\\tLB:" + rg.library + "\\tPL:" + rg.platform;
      }

inputs:
  reference:
    type: File
    secondaryFiles: [.amb, .ann, .bwt, .pac, .sa]
    inputBinding:
      position: 1
  reads_1:
    type: File
    inputBinding:
      position: 2
  reads_2:
    type: File
    inputBinding:
      position: 3
  read_group:
    type: ../types/read_group.yml#ReadGroup
  threads:
    type: int
    default: 4

stdout: $(inputs.read_group.id).sam

outputs:
  alignment:
    type: stdout
