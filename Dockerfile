# The console's image: web, worker and beat run from it with different commands.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV DJANGO_SETTINGS_MODULE=config.settings PLUGBOARD_VAR_DIR=/var/lib/plugboard
RUN mkdir -p /var/lib/plugboard && python manage.py collectstatic --no-input -v 0
EXPOSE 8000
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
