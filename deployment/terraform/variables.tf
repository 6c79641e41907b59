variable "region" {
  description = "AWS region of the grid and of the EKS cluster."
  type        = string
}

variable "eks_cluster_name" {
  description = "Name of the existing EKS cluster the agents and htc-server run on (its OIDC provider must be registered in IAM)."
  type        = string
}

variable "prefix" {
  description = "Name of the grid: queues are <prefix>__<priority> and <prefix>__dlq, the table is <prefix> (as `htc aws init --prefix` makes them)."
  type        = string
  default     = "htc"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,60}$", var.prefix))
    error_message = "The prefix may hold only letters, digits, '-' and '_', at most 60 characters (SQS queue names)."
  }
}

variable "priorities" {
  description = "Session priorities to create queues for. Queues of other priorities are created by the grid on first use (the role may create <prefix>__* queues)."
  type        = list(number)
  default     = [0]
}

variable "max_receive_count" {
  description = "SQS redrive limit. Must equal the sqs:// URL's max_receive_count (default 1000) and stay above every session's max retries + 1."
  type        = number
  default     = 1000
}

variable "bucket_name" {
  description = "S3 bucket of the payloads; default <prefix>-<account id>-<region>."
  type        = string
  default     = null
}

variable "payload_prefix" {
  description = "Key prefix of the payloads in the bucket (the path of the s3:// URL)."
  type        = string
  default     = "payloads"
}

variable "payload_expiration_days" {
  description = "Payloads (task inputs and outputs) older than this are deleted by an S3 lifecycle rule. Keep it above the longest time a session's results are read."
  type        = number
  default     = 30
}

variable "kms_key_arn" {
  description = "KMS key for the bucket's default encryption (SSE-KMS); null for SSE-S3 (AES256, no KMS request charges)."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Kubernetes namespace of the grid (deployment/kubernetes overlays: htc-grid)."
  type        = string
  default     = "htc-grid"
}

variable "service_account" {
  description = "Kubernetes service account of htc-server and the agents (deployment/kubernetes/base: htc-grid)."
  type        = string
  default     = "htc-grid"
}

variable "create_ecr_repository" {
  description = "Create an ECR repository for the htc-grid image."
  type        = bool
  default     = true
}

variable "point_in_time_recovery" {
  description = "DynamoDB point-in-time recovery (continuous backups; costs about 20 % of the table's storage price)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
  default     = { "app" = "htc-grid" }
}
