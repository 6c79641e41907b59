output "grid_urls" {
  description = "The backend URLs: HTC_QUEUE, HTC_STATE and HTC_PAYLOAD of deployment/kubernetes/overlays/aws/grid-settings.yaml."
  value = {
    HTC_QUEUE   = "sqs://${var.region}/${var.prefix}"
    HTC_STATE   = "dynamodb://${var.region}/${aws_dynamodb_table.state.name}"
    HTC_PAYLOAD = "s3://${aws_s3_bucket.payloads.bucket}/${var.payload_prefix}?region=${var.region}"
  }
}

output "grid_role_arn" {
  description = "The IAM role of the htc-grid service account (annotation eks.amazonaws.com/role-arn)."
  value       = aws_iam_role.grid.arn
}

output "queue_urls" {
  description = "The SQS queues by priority, and the dead-letter queue."
  value       = merge({ for p, q in aws_sqs_queue.priority : p => q.url }, { dlq = aws_sqs_queue.dead_letter.url })
}

output "ecr_repository_url" {
  description = "Where to push the htc-grid image."
  value       = var.create_ecr_repository ? aws_ecr_repository.grid[0].repository_url : null
}
