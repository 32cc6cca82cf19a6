# The console's image: web, the control worker and beat run from it with different commands
# (docker-compose.yml). Node agents have their own image (Dockerfile.node), with a vLLM runtime.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 plugboard
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV DJANGO_SETTINGS_MODULE=config.settings PLUGBOARD_VAR_DIR=/var/lib/plugboard
# collectstatic reads the settings, which want the console's keys outside debug: none exist at build time.
RUN mkdir -p /var/lib/plugboard && DEBUG=1 python manage.py collectstatic --no-input -v 0 \
    && chown -R plugboard /var/lib/plugboard
USER plugboard
EXPOSE 8000
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
