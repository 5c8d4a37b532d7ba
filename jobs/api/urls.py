from django.urls import path

from jobs.api import payment_views, views

urlpatterns = [
    path("v1/jobs", views.JobsView.as_view(), name="jobs"),
    path("v1/jobs/history", views.JobListView.as_view(), name="jobs-history"),
    path("v1/jobs/<uuid:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("v1/jobs/<uuid:job_id>/status", views.JobStatusView.as_view(), name="job-status"),
    path("v1/jobs/<uuid:job_id>/result", views.JobResultView.as_view(), name="job-result"),
    path("v1/jobs/<uuid:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("v1/jobs/<uuid:job_id>/receipt", views.JobReceiptView.as_view(), name="job-receipt"),
    path("v1/jobs/<uuid:job_id>/receipts", views.JobReceiptsView.as_view(), name="job-receipts"),
    path("v1/jobs/<uuid:job_id>/payment", payment_views.JobPaymentDetailView.as_view(), name="job-payment"),
    # Paying for a job and ending its escrow; the payment's reads are payments.api's.
    path("v1/payments", payment_views.PaymentCreateView.as_view(), name="payments"),
    path("v1/payments/<str:payment_id>/release", payment_views.PaymentReleaseView.as_view(), name="payment-release"),
    path("v1/payments/<str:payment_id>/refund", payment_views.PaymentRefundView.as_view(), name="payment-refund"),
    # The original coordinator's client router.
    path("v1/client/jobs", views.JobSubmitView.as_view(), name="client-jobs"),
    path("v1/client/jobs/<uuid:job_id>/status", views.JobStatusView.as_view(), name="client-job-status"),
    path("v1/client/jobs/<uuid:job_id>/receipts", views.JobReceiptsView.as_view(), name="client-job-receipts"),
]
