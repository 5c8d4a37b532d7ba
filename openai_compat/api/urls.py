from django.urls import path

from openai_compat.api import views

urlpatterns = [
    path("v1/chat/completions", views.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("v1/completions", views.CompletionsView.as_view(), name="openai-completions"),
    path("v1/embeddings", views.EmbeddingsView.as_view(), name="openai-embeddings"),
]
