from django.urls import path
from shop import views

urlpatterns = [path("order/<int:number>/", views.order)]
