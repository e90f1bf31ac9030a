"""The API's routes, one APIRouter per concern; serve.app includes them all."""
