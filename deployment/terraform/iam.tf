# IRSA: the role htc-server and the agents assume through their Kubernetes service account. Least
# privilege: only the API actions the GridAWS backends call at run time, on only this grid's queues,
# table and payload prefix. Creating the table and the bucket is Terraform's job, so
# the role cannot; it can create queues named <prefix>__* because the grid makes the queue of a new
# priority on first use. scripts/check-terraform.py checks this list against the backends' calls.

data "aws_eks_cluster" "grid" {
  name = var.eks_cluster_name
}

locals {
  oidc_issuer = replace(data.aws_eks_cluster.grid.identity[0].oidc[0].issuer, "https://", "")
}

data "aws_iam_openid_connect_provider" "cluster" {
  url = data.aws_eks_cluster.grid.identity[0].oidc[0].issuer
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [data.aws_iam_openid_connect_provider.cluster.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "grid" {
  name               = "${var.prefix}-grid"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

data "aws_iam_policy_document" "grid" {
  statement {
    sid = "Queues"
    actions = [
      "sqs:ChangeMessageVisibility",
      "sqs:CreateQueue",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
      "sqs:ReceiveMessage",
      "sqs:SendMessage",
    ]
    resources = ["arn:aws:sqs:${var.region}:${local.account_id}:${var.prefix}__*"]
  }
  # ListQueues takes no resource; it only lists queue URLs (filtered by the <prefix>__ name prefix).
  statement {
    sid       = "ListQueues"
    actions   = ["sqs:ListQueues"]
    resources = ["*"]
  }
  # TransactWriteItems (submissions, every transition with its counters and completion numbers) has no
  # IAM action of its own: its Updates and Puts are authorised by dynamodb:UpdateItem and dynamodb:PutItem.
  # Query also reads the completion index (<table>/index/completions).
  statement {
    sid = "StateTable"
    actions = [
      "dynamodb:BatchGetItem",
      "dynamodb:BatchWriteItem",
      "dynamodb:DeleteItem",
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:Query",
      "dynamodb:UpdateItem",
    ]
    resources = [aws_dynamodb_table.state.arn, "${aws_dynamodb_table.state.arn}/index/*"]
  }
  statement {
    sid = "Payloads"
    actions = [
      "s3:AbortMultipartUpload",
      "s3:DeleteObject",
      "s3:GetObject",
      "s3:PutObject",
    ]
    resources = ["${aws_s3_bucket.payloads.arn}/${var.payload_prefix}/*"]
  }
  # Without ListBucket, S3 answers 403 instead of 404 for a payload that does not exist, and the
  # store could not tell "absent" from "refused".
  statement {
    sid       = "PayloadBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.payloads.arn]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "PayloadKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "grid" {
  name   = "htc-grid"
  role   = aws_iam_role.grid.id
  policy = data.aws_iam_policy_document.grid.json
}
