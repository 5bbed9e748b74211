#!/usr/bin/env Rscript
# Drop low-quality cells from a Matrix Market count matrix and report per-cell metrics.
suppressPackageStartupMessages({
  library(Matrix)
  library(optparse)
})

options <- parse_args(OptionParser(option_list = list(
  make_option("--min-genes", type = "integer", default = 200L, dest = "min_genes"),
  make_option("--max-mito-fraction", type = "double", default = 0.2, dest = "max_mito")
)), positional_arguments = 1)

counts_path <- options$args[[1]]
stem <- sub("\\.mtx\\.gz$", "", counts_path)
counts <- as(readMM(gzfile(counts_path)), "CsparseMatrix")  # genes x cells
barcodes <- read.delim(gzfile(paste0(stem, ".barcodes.tsv.gz")), header = FALSE)[[1]]
features <- read.delim(gzfile(paste0(stem, ".features.tsv.gz")), header = FALSE)
mito <- grepl("^MT-", toupper(features[[2]]))

total_counts <- colSums(counts)
n_genes <- colSums(counts > 0)
mito_fraction <- ifelse(total_counts > 0, colSums(counts[mito, , drop = FALSE]) / total_counts, 0)
keep <- n_genes >= options$options$min_genes & mito_fraction <= options$options$max_mito

writeMM(counts[, keep, drop = FALSE], "filtered.mtx")
system2("gzip", c("-f", "filtered.mtx"))
write.table(
  data.frame(barcode = barcodes, total_counts = total_counts, n_genes = n_genes,
             mito_fraction = round(mito_fraction, 4), kept = keep),
  "qc_metrics.tsv", sep = "\t", quote = FALSE, row.names = FALSE
)
