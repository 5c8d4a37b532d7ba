from django.urls import path

from catalog.api import views

urlpatterns = [
    path("v1/models", views.ModelListView.as_view(), name="models-list"),
    path("v1/models/<str:model_id>", views.ModelDetailView.as_view(), name="models-detail"),
]
