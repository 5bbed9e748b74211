"""Common words: tokens that make a plain alias generic rather than distinctive.

English function and everyday words, and the vocabulary of workflow and analysis names
(data types, operations, file formats, common tool families). A token in this set never counts
towards an alias being distinctive (:func:`aggregator.merge.identity.distinctive`).
"""

from __future__ import annotations

from typing import Final

_ENGLISH: Final = """
a about above after again against all also an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
get got had has have having he her here hers him his how i if in into is it its just like
make many may me more most much must my new no nor not now of off old on once one only or
other our out over own same see she should so some such than that the their them then there
these they this those through to too two three four five under until up upon us use used
using very via was we well were what when where which while who why will with without would
you your first second last next best simple basic quick easy fast full small large big my
our demo example examples sample samples template templates tutorial training course hello
world foo bar baz tool tools workflow workflows pipeline pipelines analysis analyses project
projects general generic standard common core base basic custom official community public
private version release stable beta alpha dev develop development production final draft
copy fork old new legacy updated update run runner wrapper script scripts module modules
subworkflow subworkflows step steps task tasks process processes job jobs rule rules
package packages container containers image images docker singularity conda galaxy
nextflow snakemake cwl wdl nfcore nf core iwc dockstore workflowhub biocontainers github
"""

_ANALYSIS: Final = """
variant variants calling caller call calls germline somatic joint genotyping genotype
genotypes haplotype haplotypes phasing imputation annotation annotate annotations filter
filtering filtered quality control qc trimming trim trimmed alignment align aligner aligned
mapping map mapper mapped assembly assemble assembler denovo novo reference genome genomes
genomic genomics exome exomes wgs wes targeted panel panels amplicon amplicons sequencing
sequence sequences reads read short long paired single end ends fastq fasta bam sam cram vcf
gvcf bcf bed gff gtf bigwig tsv csv json yaml rna dna rnaseq dnaseq chipseq atacseq
methylseq scrnaseq scrna cell cells differential expression gene genes transcript
transcripts transcriptome transcriptomics isoform quantification quant counting count
counts peak peaks calling metagenomics metagenome microbiome taxonomy taxonomic
classification profiling profile proteomics protein proteins peptide metabolomics mass
spectrometry structure structural sv cnv copy number snp snv indel indels mutation
mutations mutect mutect2 haplotypecaller gatk gatk4 bwa bowtie bowtie2 star hisat hisat2
salmon kallisto samtools bcftools picard fastqc multiqc trimmomatic cutadapt spades
megahit kraken kraken2 bracken prokka busco quast blast diamond hmmer minimap minimap2
nanopore pacbio illumina ont hifi consensus coverage depth duplicate duplicates markdup
dedup sort sorted index indexing merge merged split convert conversion download upload
fetch sra ena ncbi ensembl ucsc human mouse covid sars cov2 viral virus bacterial bacteria
plant plants cancer tumor tumour normal pair pairs cohort population evolution phylogeny
phylogenetic tree trees clustering cluster clusters network networks statistics stats
report reports visualisation visualization plot plots summary preprocessing processing
postprocessing data dataset datasets input inputs output outputs file files result results
test tests testing benchmark benchmarking validation
"""

COMMON_WORDS: Final = frozenset((_ENGLISH + _ANALYSIS).split())
