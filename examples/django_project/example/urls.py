from __future__ import annotations

from django.contrib import admin
from django.urls import path

from orders import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("orders/", views.create_order, name="create-order"),
    path("orders/<int:order_id>/", views.show_order, name="show-order"),
    path("reports/", views.start_report, name="start-report"),
    path("reports/<str:result_id>/", views.show_report, name="show-report"),
]
