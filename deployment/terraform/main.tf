# The AWS side of HTC Grid: what `htc aws init` creates for development, here for production. The
# names, keys and attributes are the ones the GridAWS backends use (docs/backends.md, AWS);
# scripts/check-terraform.py checks them in `make test`.

data "aws_caller_identity" "current" {}

locals {
  account_id  = data.aws_caller_identity.current.account_id
  table_name  = var.prefix
  bucket_name = coalesce(var.bucket_name, lower("${var.prefix}-${local.account_id}-${var.region}"))
  # The backends call CreateQueue with these attributes when they meet a new priority; SQS refuses
  # the call when an existing queue has other values, so they must match the backend's exactly.
  message_retention_seconds = 1209600
}

# --- SQS: one standard queue per priority, each redriving to the dead-letter queue ---------------

resource "aws_sqs_queue" "dead_letter" {
  name                      = "${var.prefix}__dlq"
  message_retention_seconds = local.message_retention_seconds
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "priority" {
  for_each                  = toset([for p in var.priorities : tostring(p)])
  name                      = "${var.prefix}__${each.key}"
  message_retention_seconds = local.message_retention_seconds
  sqs_managed_sse_enabled   = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.max_receive_count
  })
}

# --- DynamoDB: the state store, one table (pk + sk) and its completion index -------------------------

resource "aws_dynamodb_table" "state" {
  name         = local.table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }
  attribute {
    name = "sid"
    type = "S"
  }
  attribute {
    name = "cseq"
    type = "N"
  }

  # The completion order: terminal tasks carry their session (sid) and completion number (cseq); a
  # sparse index, written only when a task becomes terminal, read by results in completion order.
  global_secondary_index {
    name            = "completions"
    hash_key        = "sid"
    range_key       = "cseq"
    projection_type = "ALL"
  }

  # Sessions (pk "session"), each session's tasks (pk "t#<session>#<shard>", sk the index) and the
  # lease buckets the reaper reads (pk "lease#<shard>", sk the expiry) and each session's counters are
  # queries of the table itself; only the completion order has an index.

  # The grid never sets it; an operator may, to expire old records (docs/backends.md).
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = var.point_in_time_recovery
  }

  server_side_encryption {
    enabled = true
  }
}

# --- S3: the payloads, encrypted, private, expiring ---------------------------------------------

resource "aws_s3_bucket" "payloads" {
  bucket = local.bucket_name
}

resource "aws_s3_bucket_ownership_controls" "payloads" {
  bucket = aws_s3_bucket.payloads.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "payloads" {
  bucket                  = aws_s3_bucket.payloads.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "payloads" {
  bucket = aws_s3_bucket.payloads.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "payloads" {
  bucket = aws_s3_bucket.payloads.id
  rule {
    id     = "expire-old-payloads"
    status = "Enabled"
    filter {
      prefix = "${var.payload_prefix}/"
    }
    expiration {
      days = var.payload_expiration_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# --- ECR: where the image is pushed --------------------------------------------------------------

resource "aws_ecr_repository" "grid" {
  count                = var.create_ecr_repository ? 1 : 0
  name                 = "htc-grid"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
}
