from django.urls import path

from jobs.api import miner_views, payment_views, views

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
    # The miner work protocol (registration and capabilities are miners.api.urls, mounted before
    # these so that v1/miners/register is not taken for a miner named "register").
    path("v1/miners/heartbeat", miner_views.HeartbeatView.as_view(), name="miner-heartbeat"),
    path("v1/miners/poll", miner_views.PollView.as_view(), name="miner-poll"),
    path("v1/miners/tokens", miner_views.TokensView.as_view(), name="miner-tokens"),
    path("v1/miners/results", miner_views.ResultsView.as_view(), name="miner-results"),
    path("v1/miners/<uuid:job_id>/result", miner_views.ResultView.as_view(), name="miner-result"),
    path("v1/miners/<uuid:job_id>/fail", miner_views.FailView.as_view(), name="miner-fail"),
    path("v1/miners/<str:miner_id>/jobs", miner_views.MinerJobsView.as_view(), name="miner-jobs"),
    path("v1/miners/<str:miner_id>/earnings", miner_views.MinerEarningsView.as_view(), name="miner-earnings"),
    path("v1/miners/<str:miner_id>", miner_views.MinerDetailView.as_view(), name="miner-detail"),
    # The original coordinator's miner router.
    path("v1/miner/heartbeat", miner_views.HeartbeatView.as_view(), name="legacy-miner-heartbeat"),
    path("v1/miner/jobs", miner_views.PollView.as_view(http_method_names=["get", "options"]), name="legacy-miner-jobs"),
    path("v1/miner/result", miner_views.LegacyResultView.as_view(), name="legacy-miner-result"),
    # The integration tutorial's claim protocol.
    path("v1/jobs/available", miner_views.AvailableJobsView.as_view(), name="jobs-available"),
    path("v1/jobs/<uuid:job_id>/claim", miner_views.ClaimView.as_view(), name="job-claim"),
    path("v1/jobs/<uuid:job_id>/complete", miner_views.CompleteView.as_view(), name="job-complete"),
]
