#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
id: fastqc

label: FastQC read quality report
doc: Runs FastQC on one or more FASTQ files and collects the HTML and zip reports.

requirements:
  - class: DockerRequirement
    dockerPull: quay.io/demo-lab/fastqc:0.12.1
  - class: InlineJavascriptRequirement

baseCommand: [fastqc, --outdir, ., --extract]

inputs:
  reads:
    type: File[]
    inputBinding:
      position: 1
  threads:
    type: int
    default: 1
    inputBinding:
      prefix: --threads
  adapters:
    type: File?
    doc: Optional tab-separated adapter list (name, sequence).
    inputBinding:
      prefix: --adapters

outputs:
  html_reports:
    type: File[]
    outputBinding:
      glob: "*_fastqc.html"
  zip_reports:
    type: File[]
    outputBinding:
      glob: "*_fastqc.zip"
  summaries:
    type: File[]
    outputBinding:
      glob: "*_fastqc/summary.txt"
